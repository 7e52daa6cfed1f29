"""The simulator's WebSocket streams through pybit's WebSocket (and raw websocket-client for
exact shapes), against SimServer on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import websocket
from pybit.unified_trading import HTTP
from pydantic import SecretStr

from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from bot.sim import stream as sim_stream
from bot.sim.client import SimWebSocket, SimWebSocketTrading
from bot.sim.errors import MAX_RET_MSG_CHARS
from bot.sim.stream import MAX_REQUEST_BYTES, Channel, StreamHub, _alive_s
from tests.bot.sim.kit import eventually

KEY = "stream-key"
SECRET = "stream-secret"
HEDGE_KEY = "hedge-key"


class _Collector:
    """A pybit callback that keeps every message, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []

    def __call__(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._messages.append(json.loads(json.dumps(message)))

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages)


@pytest.fixture
def server() -> Iterator[SimServer]:
    accounts = [
        SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), note="main"),
        SimAccountSpec(api_key=HEDGE_KEY, api_secret=SecretStr(SECRET), hedge_mode=True),
    ]
    with SimServer(SimExchange(SimulatorConfig(seed=3, accounts=accounts))) as running:
        yield running


@pytest.fixture
def open_ws(server: SimServer) -> Iterator[Callable[..., SimWebSocket]]:
    sockets: list[SimWebSocket] = []

    def make(channel: str, **kwargs: Any) -> SimWebSocket:
        path = "/v5/private" if channel == "private" else f"/v5/public/{channel}"
        ws = SimWebSocket(
            server.ws_url + path,
            channel_type=channel,
            testnet=False,
            retries=3,
            restart_on_error=False,
            **kwargs,
        )
        sockets.append(ws)
        return ws

    yield make
    for ws in sockets:
        ws.exit()


@pytest.fixture
def raw(server: SimServer) -> Iterator[Callable[[str], websocket.WebSocket]]:
    sockets: list[websocket.WebSocket] = []

    def make(path: str) -> websocket.WebSocket:
        sock = websocket.create_connection(server.ws_url + path, timeout=5)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close()


@pytest.fixture
def http(server: SimServer) -> Iterator[HTTP]:
    session = HTTP(api_key=KEY, api_secret=SECRET, timeout=5, max_retries=1, retry_codes={-1})
    session.endpoint = server.url
    yield session
    session.client.close()


def _auth_args(key: str, secret: str, expires: int) -> list[Any]:
    signature = hmac.new(
        secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256
    ).hexdigest()
    return [key, expires, signature]


def _authenticate(sock: websocket.WebSocket) -> dict[str, Any]:
    """Authenticate `sock` with the test key, its request valid for 5 s; the answer."""
    return _ask(
        sock, {"op": "auth", "args": _auth_args(KEY, SECRET, int(time.time() * 1000) + 5000)}
    )


def _ask(sock: websocket.WebSocket, request: dict[str, Any]) -> dict[str, Any]:
    sock.send(json.dumps(request))
    answer: dict[str, Any] = json.loads(sock.recv())
    return answer


def _send_raw(sock: websocket.WebSocket, text: str) -> dict[str, Any]:
    sock.send(text)
    answer: dict[str, Any] = json.loads(sock.recv())
    return answer


def _post(server: SimServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(server.url + path, json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


# ----------------------------------------------------------------- private: commands


def test_auth_ping_and_subscribe_answer_in_bybits_private_shapes(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    sock = raw("/v5/private")
    expires = int(time.time() * 1000) + 5000

    refused = _ask(sock, {"req_id": "s1", "op": "subscribe", "args": ["order"]})
    auth = _ask(sock, {"req_id": "a1", "op": "auth", "args": _auth_args(KEY, SECRET, expires)})
    pong = _ask(sock, {"req_id": "p1", "op": "ping"})
    subscribed = _ask(sock, {"req_id": "s2", "op": "subscribe", "args": ["order", "wallet"]})
    unsubscribed = _ask(sock, {"req_id": "u1", "op": "unsubscribe", "args": ["wallet"]})

    conn_id = auth["conn_id"]
    assert refused == {
        "success": False,
        "ret_msg": "Request not authorized",
        "op": "subscribe",
        "conn_id": conn_id,
        "req_id": "s1",
    }
    assert auth == {
        "success": True,
        "ret_msg": "",
        "op": "auth",
        "conn_id": conn_id,
        "req_id": "a1",
    }
    assert pong["op"] == "pong" and pong["req_id"] == "p1" and pong["conn_id"] == conn_id
    assert pong["args"][0].isdigit()
    assert subscribed == {
        "success": True,
        "ret_msg": "",
        "op": "subscribe",
        "conn_id": conn_id,
        "req_id": "s2",
    }
    assert unsubscribed["success"] is True and unsubscribed["op"] == "unsubscribe"


def test_categorised_private_topics_are_taken_but_not_beside_their_all_in_one_topic(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    """Bybit: `order.spot` ... `order.option` (and so on for execution, execution.fast and
    position) listen to one category; "All-In-One topic and Categorised topic cannot be in
    the same subscription request"."""
    sock = raw("/v5/private")
    expires = int(time.time() * 1000) + 5000
    assert _ask(sock, {"op": "auth", "args": _auth_args(KEY, SECRET, expires)})["success"]

    categorised = _ask(
        sock,
        {
            "op": "subscribe",
            "args": ["order.linear", "order.spot", "execution.inverse", "position.option"],
        },
    )
    mixed = _ask(sock, {"op": "subscribe", "args": ["execution", "execution.linear"]})
    fast_beside_all = _ask(sock, {"op": "subscribe", "args": ["execution", "execution.fast"]})
    unknown = _ask(sock, {"op": "subscribe", "args": ["position.spot"]})

    assert categorised["success"] is True
    assert mixed["success"] is False and "execution.linear" in mixed["ret_msg"]
    assert fast_beside_all["success"] is True  # execution.fast is a topic of its own
    assert unknown["success"] is False and "handler not found" in unknown["ret_msg"]


def test_topics_of_what_the_simulator_has_none_of_are_taken_and_stay_silent(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    """Refused, they cut pybit's connection (its subscription answer handler fails); Bybit
    documents each: greeks, dcp.*, insurance.USDT, adlAlert.USDT, orderbook.rpi.<symbol>."""
    private = raw("/v5/private")
    expires = int(time.time() * 1000) + 5000
    assert _ask(private, {"op": "auth", "args": _auth_args(KEY, SECRET, expires)})["success"]
    public = raw("/v5/public/linear")

    taken_private = _ask(private, {"op": "subscribe", "args": ["greeks", "dcp.future"]})
    taken_public = _ask(
        public,
        {"op": "subscribe", "args": ["insurance.USDT", "adlAlert.USDT", "orderbook.rpi.BTCUSDT"]},
    )
    wrong_coin = _ask(public, {"op": "subscribe", "args": ["insurance.BTC"]})

    assert taken_private["success"] is True and taken_public["success"] is True
    assert wrong_coin["success"] is False
    public.settimeout(1.5)
    with pytest.raises(websocket.WebSocketTimeoutException):  # nothing is pushed on them
        public.recv()


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (_auth_args(KEY, "wrong-secret", 4_102_444_800_000), "Invalid sign"),
        (_auth_args("unknown-key", SECRET, 4_102_444_800_000), "Invalid apikey"),
        (_auth_args(KEY, SECRET, 1_000), "Params Error"),
        (["only-one"], "Params Error"),
    ],
)
def test_bad_auth_is_refused(
    raw: Callable[[str], websocket.WebSocket], args: list[Any], reason: str
) -> None:
    sock = raw("/v5/private")

    answer = _ask(sock, {"op": "auth", "args": args})

    assert answer["success"] is False and answer["op"] == "auth"
    assert answer["ret_msg"] == reason  # Bybit's whole message: an expires past is "Params Error"
    assert _ask(sock, {"op": "subscribe", "args": ["order"]})["success"] is False


def test_malformed_requests_get_an_error_answer_and_the_connection_stays(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    sock = raw("/v5/private")

    answers = [
        _send_raw(sock, "not json"),
        _ask(sock, {"op": "fly"}),
        _ask(sock, {"op": "subscribe", "args": "order"}),
        _send_raw(sock, "[1, 2]"),
        _ask(sock, {"op": {"name": "subscribe"}}),
        _ask(sock, {"op": ["subscribe"], "args": ["order"]}),
    ]

    assert all(answer["success"] is False for answer in answers)
    assert all(isinstance(answer["ret_msg"], str) for answer in answers)
    assert _ask(sock, {"op": "ping"})["op"] == "pong"


def test_an_op_that_is_not_a_string_is_an_invalid_op_on_the_public_stream_too(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    sock = raw("/v5/public/linear")

    answer = _ask(sock, {"op": {"name": "subscribe"}, "args": ["tickers.BTCUSDT"]})

    assert answer["success"] is False
    assert answer["ret_msg"].startswith("error:invalid op")
    assert _ask(sock, {"op": "ping"})["ret_msg"] == "pong"


def test_pybit_authenticates_and_pings(open_ws: Callable[..., SimWebSocket]) -> None:
    ws = open_ws("private", api_key=KEY, api_secret=SECRET)

    eventually(lambda: ws.auth, bool, "pybit's auth flag")
    ws._send_custom_ping()
    ws.order_stream(_Collector())

    assert ws.is_connected()


# ----------------------------------------------------------------- private: pushes


def test_a_filled_resting_order_streams_order_execution_position_and_wallet(
    server: SimServer, open_ws: Callable[..., SimWebSocket], http: HTTP
) -> None:
    ws = open_ws("private", api_key=KEY, api_secret=SECRET)
    orders, executions, positions, wallets = _Collector(), _Collector(), _Collector(), _Collector()
    ws.order_stream(orders)
    ws.execution_stream(executions)
    ws.position_stream(positions)
    ws.wallet_stream(wallets)
    eventually(
        lambda: [c["topics"] for c in _connections(server)],
        lambda topics: topics == [["execution", "order", "position", "wallet"]],
        "four topics",
    )

    placed = http.place_order(
        category="linear",
        symbol="BTCUSDT",
        side="Buy",
        orderType="Limit",
        qty="0.01",
        price="96000",
        orderLinkId="stream-1",
        positionIdx=0,
    )
    order_id = placed["result"]["orderId"]
    eventually(lambda: orders.messages, lambda m: len(m) >= 1, "the New order")
    # The order rests once the matching engine has seen it (market_fill_delay_ms later).
    eventually(lambda: server.exchange.stats()["pending_events"], lambda n: n == 0, "resting")
    _post(server, "/sim/prices", {"BTCUSDT": 95900})
    eventually(
        lambda: [m["data"][0]["orderStatus"] for m in orders.messages],
        lambda statuses: "Filled" in statuses,
        "the Filled order",
    )
    eventually(lambda: executions.messages, lambda m: len(m) == 1, "one execution")
    eventually(lambda: positions.messages, lambda m: len(m) >= 1, "a position update")
    eventually(lambda: wallets.messages, lambda m: len(m) >= 2, "wallet updates")

    new, filled = orders.messages[0], orders.messages[-1]
    assert set(new) == {"id", "topic", "creationTime", "data"}
    assert new["topic"] == "order" and isinstance(new["creationTime"], int)
    assert new["data"][0]["orderStatus"] == "New"
    row = filled["data"][0]
    assert row["category"] == "linear" and row["orderId"] == order_id
    assert row["orderLinkId"] == "stream-1" and row["orderStatus"] == "Filled"
    assert row["cumExecQty"] == "0.01" and row["avgPrice"] == "96000"
    assert row["cumExecFee"] == "0.192" and row["leavesQty"] == "0"
    assert row["positionIdx"] == 0 and row["closedPnl"] == "0"

    execution = executions.messages[0]["data"]
    assert len(execution) == 1
    fill = execution[0]
    assert fill["category"] == "linear" and fill["execType"] == "Trade"
    assert fill["execPrice"] == "96000" and fill["execQty"] == "0.01"
    assert fill["execFee"] == "0.192" and fill["feeRate"] == "0.0002"
    assert fill["isMaker"] is True and fill["closedSize"] == "0"
    assert fill["orderId"] == order_id and fill["orderLinkId"] == "stream-1"
    assert fill["side"] == "Buy" and fill["symbol"] == "BTCUSDT"
    assert fill["execTime"].isdigit() and fill["execId"]

    position = positions.messages[-1]["data"][0]
    assert position["category"] == "linear" and position["positionIdx"] == 0
    assert position["symbol"] == "BTCUSDT" and position["side"] == "Buy"
    assert position["size"] == "0.01" and position["entryPrice"] == "96000"
    assert position["markPrice"] == "95900" and position["unrealisedPnl"] == "-1"
    assert position["positionStatus"] == "Normal" and isinstance(position["seq"], int)
    assert position["takeProfit"] == "0" and position["stopLoss"] == "0"
    assert position["curRealisedPnl"] == "-0.192"

    wallet = wallets.messages[-1]["data"][0]
    assert wallet["accountType"] == "UNIFIED"
    assert wallet["totalWalletBalance"] == "9999.808"
    assert {"totalEquity", "totalAvailableBalance", "coin"} <= set(wallet)
    assert wallet["coin"][0]["coin"] == "USDT"

    stats = requests.get(server.url + "/sim/stats", timeout=5).json()
    assert stats["stream_messages_sent"] >= 9


def _following_positions(server: SimServer, open_ws: Callable[..., SimWebSocket]) -> _Collector:
    """What the private `position` topic pushes from now on."""
    ws = open_ws("private", api_key=KEY, api_secret=SECRET)
    positions = _Collector()
    ws.position_stream(positions)
    eventually(
        lambda: [c["topics"] for c in _connections(server)],
        lambda topics: topics == [["position"]],
        "the position topic",
    )
    return positions


def test_creating_amending_and_cancelling_an_order_each_push_the_position(
    server: SimServer, open_ws: Callable[..., SimWebSocket], http: HTTP
) -> None:
    # Bybit: "Every time when you create/amend/cancel an order, the position topic will
    # generate a new message (regardless if there's any actual change)".
    positions = _following_positions(server, open_ws)
    order = {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "pushed"}

    http.place_order(**order, side="Buy", orderType="Limit", qty="0.01", price="96000")
    eventually(lambda: positions.messages, lambda m: len(m) == 1, "the create's push")
    http.amend_order(**order, price="95000")
    eventually(lambda: positions.messages, lambda m: len(m) == 2, "the amend's push")
    http.cancel_order(**order)
    eventually(lambda: positions.messages, lambda m: len(m) == 3, "the cancel's push")

    for message in positions.messages:  # no position: the flat one-way row
        [row] = message["data"]
        assert (row["symbol"], row["size"], row["side"]) == ("BTCUSDT", "0", "")


def test_trading_stop_streams_the_position_with_its_new_levels(
    server: SimServer, open_ws: Callable[..., SimWebSocket], http: HTTP
) -> None:
    http.place_order(
        category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.01"
    )
    eventually(lambda: server.exchange.stats()["pending_events"], lambda n: n == 0, "the fill")
    positions = _following_positions(server, open_ws)

    http.set_trading_stop(
        category="linear",
        symbol="BTCUSDT",
        tpslMode="Full",
        positionIdx=0,
        stopLoss="96000",
        takeProfit="99000",
    )

    message = eventually(lambda: positions.messages, bool, "a position update")[-1]
    assert message["topic"] == "position"
    position = message["data"][0]
    assert (position["stopLoss"], position["takeProfit"]) == ("96000", "99000")
    assert (position["side"], position["size"], position["entryPrice"]) == ("Buy", "0.01", "97000")


def _connections(server: SimServer) -> list[dict[str, Any]]:
    answer = requests.get(server.url + "/sim/streams", timeout=5)
    connections: list[dict[str, Any]] = answer.json()["connections"]
    return connections


# ----------------------------------------------------------------- public tickers


def http_ticker(server: SimServer) -> dict[str, str]:
    answer = requests.get(
        server.url + "/v5/market/tickers",
        params={"category": "linear", "symbol": "BTCUSDT"},
        timeout=5,
    ).json()
    ticker: dict[str, str] = answer["result"]["list"][0]
    return ticker


def test_ticker_snapshot_then_deltas_merge_in_pybit(
    server: SimServer,
    open_ws: Callable[..., SimWebSocket],
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    sock = raw("/v5/public/linear")
    subscribed = _ask(sock, {"req_id": "t1", "op": "subscribe", "args": ["tickers.BTCUSDT"]})
    snapshot = json.loads(sock.recv())
    ws = open_ws("linear")
    merged = _Collector()
    ws.ticker_stream("BTCUSDT", merged)
    eventually(lambda: merged.messages, lambda m: len(m) == 1, "pybit's snapshot")

    _post(server, "/sim/prices", {"BTCUSDT": 97500})
    delta = json.loads(sock.recv())
    eventually(
        lambda: merged.messages[-1]["data"]["lastPrice"], lambda p: p == "97500", "the merge"
    )

    assert subscribed["success"] is True and subscribed["req_id"] == "t1"
    assert subscribed["op"] == "subscribe" and "conn_id" in subscribed
    assert snapshot["topic"] == "tickers.BTCUSDT" and snapshot["type"] == "snapshot"
    assert isinstance(snapshot["cs"], int) and isinstance(snapshot["ts"], int)
    assert snapshot["data"]["lastPrice"] == "97000"
    assert {"symbol", "markPrice", "indexPrice", "bid1Price", "ask1Price"} <= set(snapshot["data"])
    # Every field of the REST ticker that Bybit's linear snapshot carries too.
    rest = http_ticker(server)
    carried = {"fundingIntervalHour", "fundingCap", "preOpenPrice", "singleOpenInterest"}
    assert {name: snapshot["data"][name] for name in carried} == {n: rest[n] for n in carried}
    assert delta["type"] == "delta" and delta["cs"] > snapshot["cs"]
    assert delta["data"]["symbol"] == "BTCUSDT" and delta["data"]["lastPrice"] == "97500"
    assert delta["data"]["tickDirection"] == "PlusTick"
    assert "fundingRate" not in delta["data"]  # unchanged fields are left out
    final = merged.messages[-1]["data"]
    assert final["markPrice"] == "97500" and final["fundingRate"] == "0.0001"


def test_a_price_walk_streams_deltas(
    server: SimServer, raw: Callable[[str], websocket.WebSocket]
) -> None:
    sock = raw("/v5/public/linear")
    _ask(sock, {"op": "subscribe", "args": ["tickers.ETHUSDT"]})
    sock.recv()  # the snapshot

    _post(
        server, "/sim/prices", {"ETHUSDT": {"walk": {"seed": 1, "step_bps": 5, "interval_ms": 5}}}
    )
    deltas = [json.loads(sock.recv()) for _ in range(3)]
    _post(server, "/sim/prices", {"ETHUSDT": {"walk": None}})

    assert all(d["type"] == "delta" and "lastPrice" in d["data"] for d in deltas)
    assert [d["cs"] for d in deltas] == sorted(d["cs"] for d in deltas)


def test_price_limit_is_sent_on_subscribe_and_when_a_price_change_moves_it(
    server: SimServer,
    open_ws: Callable[..., SimWebSocket],
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    sock = raw("/v5/public/linear")
    subscribed = _ask(sock, {"op": "subscribe", "args": ["priceLimit.BTCUSDT"]})
    first = json.loads(sock.recv())
    ws = open_ws("linear")
    heard = _Collector()
    ws.price_limit_stream("BTCUSDT", heard)
    eventually(lambda: heard.messages, lambda m: len(m) == 1, "pybit's first price limit")

    server.exchange.set_prices({"BTCUSDT": "100000"})
    moved = json.loads(sock.recv())
    eventually(lambda: heard.messages, lambda m: len(m) == 2, "pybit's moved price limit")

    assert subscribed["success"] is True
    assert first["topic"] == "priceLimit.BTCUSDT" and isinstance(first["ts"], int)
    assert first["data"] == {"symbol": "BTCUSDT", "buyLmt": "97970", "sellLmt": "96030"}
    assert moved["data"] == {"symbol": "BTCUSDT", "buyLmt": "101000", "sellLmt": "99000"}
    assert [m["data"]["buyLmt"] for m in heard.messages] == ["97970", "101000"]


def test_pybit_keeps_the_book_of_snapshot_and_deltas_equal_to_the_rest_book(
    server: SimServer, open_ws: Callable[..., SimWebSocket], http: HTTP
) -> None:
    """pybit applies Bybit's deltas (size 0 deletes a level): its book after price moves must
    be the book /v5/market/orderbook answers, with the same update id `u` (Bybit: the REST
    `u` "corresponds to u in the 1000-level WebSocket orderbook stream")."""
    _post(server, "/sim/prices", {"BTCUSDT": 97100})  # the book has moved before the stream
    ws = open_ws("linear")
    books = _Collector()
    ws.orderbook_stream(50, "BTCUSDT", books)
    eventually(lambda: books.messages, bool, "the snapshot")
    rest_ids = []

    for price in (97500, 96800, 96801.5):
        _post(server, "/sim/prices", {"BTCUSDT": price})
        rest = http.get_orderbook(category="linear", symbol="BTCUSDT", limit=50)["result"]
        rest_ids.append(rest["u"])
        eventually(
            lambda: books.messages[-1]["data"],
            lambda data, rest=rest: (
                sorted(data["b"], key=lambda level: -float(level[0])) == rest["b"]
                and sorted(data["a"], key=lambda level: float(level[0])) == rest["a"]
            ),
            f"pybit's book at {price}",
        )

    assert books.messages[0]["type"] == "snapshot"
    assert books.messages[0]["data"]["u"] > 1  # not a count of this connection's messages
    ids = [m["data"]["u"] for m in books.messages]
    assert ids == sorted(set(ids))
    assert ids[-1] == rest_ids[-1]


def _apply_book(book: dict[str, dict[str, str]], message: dict[str, Any]) -> None:
    """A book message applied as Bybit says: a snapshot replaces the book, a delta's size 0
    deletes a level."""
    assert message["topic"] == "orderbook.50.BTCUSDT"
    if message["type"] == "snapshot":
        book.clear()
        book.update(b={}, a={})
    for side in ("b", "a"):
        for price, size in message["data"][side]:
            if size == "0":
                del book[side][price]
            else:
                book[side][price] = size


def test_one_delta_serves_every_connection_sent_the_same_book_and_others_get_their_own(
    server: SimServer,
    raw: Callable[[str], websocket.WebSocket],
    http: HTTP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 1000-level delta built for each connection on each move, 20 clients under a fast
    walk held every HTTP answer for a quarter of a second: a move builds one delta for the
    connections last sent the same book. One subscribed since gets its delta from its own
    snapshot, and every connection's book is the REST one."""
    built: list[int] = []
    level_changes = sim_stream._level_changes

    def counted(before: dict[str, str], after: dict[str, str]) -> list[list[str]]:
        built.append(1)
        return level_changes(before, after)

    monkeypatch.setattr(sim_stream, "_level_changes", counted)
    books: dict[websocket.WebSocket, dict[str, dict[str, str]]] = {}

    def subscribe() -> websocket.WebSocket:
        sock = raw("/v5/public/linear")
        assert _ask(sock, {"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]})["success"]
        _apply_book(books.setdefault(sock, {}), json.loads(sock.recv()))
        return sock

    early = [subscribe() for _ in range(3)]
    _post(server, "/sim/prices", {"BTCUSDT": 97500})
    for sock in early:
        _apply_book(books[sock], json.loads(sock.recv()))
    late = subscribe()
    built.clear()

    _post(server, "/sim/prices", {"BTCUSDT": 96800})
    for sock in [*early, late]:
        _apply_book(books[sock], json.loads(sock.recv()))

    assert len(built) == 2 * 2  # both sides, once for the early connections, once for the late
    rest = http.get_orderbook(category="linear", symbol="BTCUSDT", limit=50)["result"]
    for book in books.values():
        assert sorted(book["b"].items(), key=lambda level: -float(level[0])) == [
            tuple(level) for level in rest["b"]
        ]
        assert sorted(book["a"].items(), key=lambda level: float(level[0])) == [
            tuple(level) for level in rest["a"]
        ]


def test_depth_1_sends_snapshots_and_an_unserved_depth_is_refused(
    server: SimServer, raw: Callable[[str], websocket.WebSocket]
) -> None:
    sock = raw("/v5/public/linear")
    refused = _ask(sock, {"op": "subscribe", "args": ["orderbook.7.BTCUSDT"]})
    _ask(sock, {"op": "subscribe", "args": ["orderbook.1.BTCUSDT"]})
    first = json.loads(sock.recv())

    _post(server, "/sim/prices", {"BTCUSDT": 97500})
    second = json.loads(sock.recv())

    assert refused["success"] is False and "orderbook.7.BTCUSDT" in refused["ret_msg"]
    assert [m["type"] for m in (first, second)] == ["snapshot", "snapshot"]
    assert len(second["data"]["b"]) == len(second["data"]["a"]) == 1
    assert second["data"]["u"] == first["data"]["u"] + 1
    assert isinstance(second["cts"], int) and isinstance(second["ts"], int)


def test_a_long_topic_refused_is_clipped_in_ret_msg(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    sock = raw("/v5/public/linear")

    refused = _ask(sock, {"op": "subscribe", "args": ["orderbook.50." + "X" * 60_000]})

    assert refused["success"] is False
    assert refused["ret_msg"].startswith("error:handler not found,topic:orderbook.50.XXX")
    assert len(refused["ret_msg"]) <= MAX_RET_MSG_CHARS


def test_every_fill_is_a_public_trade_and_the_candle_follows_the_price(
    server: SimServer, raw: Callable[[str], websocket.WebSocket], http: HTTP
) -> None:
    sock = raw("/v5/public/linear")
    _ask(sock, {"op": "subscribe", "args": ["publicTrade.BTCUSDT", "kline.1.BTCUSDT"]})
    opened = json.loads(sock.recv())  # the kline's snapshot (trades have none)

    http.place_order(
        category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.01"
    )
    trade = _next(sock, lambda message: message["topic"] == "publicTrade.BTCUSDT")
    _post(server, "/sim/prices", {"BTCUSDT": 97777})
    candle = _next(sock, lambda message: message["data"][-1]["close"] == "97777")

    assert opened["topic"] == "kline.1.BTCUSDT" and opened["data"][0]["confirm"] is False
    assert trade["topic"] == "publicTrade.BTCUSDT" and trade["type"] == "snapshot"
    (row,) = trade["data"]
    assert (row["s"], row["S"], row["v"], row["BT"]) == ("BTCUSDT", "Buy", "0.01", False)
    assert float(row["p"]) >= 97000 and isinstance(row["T"], int) and row["i"]
    # Across a minute's end the push also holds the candle that closed, first.
    *closed, bar = candle["data"]
    assert [earlier["confirm"] for earlier in closed] in ([], [True])
    assert (bar["interval"], bar["close"], bar["confirm"]) == ("1", "97777", False)
    assert bar["end"] - bar["start"] == 59_999
    assert float(bar["high"]) >= 97777


def test_a_trade_pushes_the_last_price_at_once_and_leaves_the_mark(
    server: SimServer, raw: Callable[[str], websocket.WebSocket], http: HTTP
) -> None:
    sock = raw("/v5/public/linear")
    _ask(sock, {"op": "subscribe", "args": ["tickers.BTCUSDT", "publicTrade.BTCUSDT"]})
    snapshot = json.loads(sock.recv())

    http.place_order(
        category="linear", symbol="BTCUSDT", side="Sell", orderType="Market", qty="0.01"
    )
    trade = _next(sock, lambda message: message["topic"] == "publicTrade.BTCUSDT")
    ticker = _next(sock, lambda message: "lastPrice" in message["data"])

    (row,) = trade["data"]
    assert (row["S"], row["p"], row["L"]) == ("Sell", "96999.9", "MinusTick")  # the bid
    assert ticker["type"] == "delta" and ticker["cs"] > snapshot["cs"]
    assert (ticker["data"]["lastPrice"], ticker["data"]["tickDirection"]) == (
        "96999.9",
        "MinusTick",
    )
    assert "markPrice" not in ticker["data"]  # the market did not move
    assert http_ticker(server)["markPrice"] == "97000"


def _next(
    sock: websocket.WebSocket, wanted: Callable[[dict[str, Any]], bool], within_s: float = 5.0
) -> dict[str, Any]:
    """The next message `wanted` accepts (a refresh of the market may come before it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        message = json.loads(sock.recv())
        if wanted(message):
            return message
    raise AssertionError("no such message in time")


def test_a_still_market_still_streams_what_fills_change_and_its_level_1_book(
    server: SimServer, raw: Callable[[str], websocket.WebSocket], http: HTTP
) -> None:
    """Bybit pushes on a timer, not only on a price change: the ticker's volume and the open
    candle after a fill at the same price, and the depth-1 book again after 3 s unchanged."""
    sock = raw("/v5/public/linear")
    topics = ["tickers.BTCUSDT", "kline.1.BTCUSDT", "orderbook.1.BTCUSDT"]
    _ask(sock, {"op": "subscribe", "args": topics})
    first = {}
    while len(first) < len(topics):
        message = json.loads(sock.recv())
        first.setdefault(message["topic"], message)

    http.place_order(
        category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.01"
    )
    later: dict[str, dict[str, Any]] = {}  # the first message of each topic since the fill

    def every_topic_heard(message: dict[str, Any]) -> bool:
        # A new minute's candle (volume 0) can come between the order and its fill.
        before_the_fill = message["topic"].startswith("kline.") and all(
            candle["volume"] == "0" for candle in message["data"]
        )
        if not before_the_fill:
            later.setdefault(message["topic"], message)
        return len(later) == len(topics)

    _next(sock, every_topic_heard)
    ticker, candle, book = (later[topic] for topic in topics)

    assert first["tickers.BTCUSDT"]["data"]["volume24h"] == "0"
    assert ticker["type"] == "delta" and ticker["data"]["volume24h"] == "0.01"
    assert "lastPrice" not in ticker["data"]  # the price stood still
    assert ticker["cs"] >= first["tickers.BTCUSDT"]["cs"]
    # The fill's candle: the open one, or (a minute turned since) the one just confirmed
    # beside the new minute's empty candle.
    [filled] = [row for row in candle["data"] if row["volume"] != "0"]
    assert filled["volume"] == "0.01"
    assert filled["confirm"] is (filled is not candle["data"][-1])
    assert book["type"] == "snapshot"
    assert (book["data"]["b"], book["data"]["a"]) == (
        first["orderbook.1.BTCUSDT"]["data"]["b"],
        first["orderbook.1.BTCUSDT"]["data"]["a"],
    )
    assert book["ts"] - first["orderbook.1.BTCUSDT"]["ts"] >= 3000
    assert book["data"]["u"] == first["orderbook.1.BTCUSDT"]["data"]["u"]  # Bybit: the same


def test_fast_execution_carries_a_fills_trade_in_its_few_fields(
    raw: Callable[[str], websocket.WebSocket], http: HTTP
) -> None:
    """Bybit's `execution.fast`: trades only; category, symbol, orderId, isMaker,
    orderLinkId ("" for a maker's fill), execId, execPrice, execQty, side, execTime, seq."""
    sock = raw("/v5/private")
    _authenticate(sock)
    subscribed = _ask(sock, {"op": "subscribe", "args": ["execution.fast", "execution"]})

    http.place_order(
        category="linear",
        symbol="BTCUSDT",
        side="Buy",
        orderType="Market",
        qty="0.01",
        orderLinkId="fast-1",
    )
    heard: dict[str, dict[str, Any]] = {}

    def both_heard(message: dict[str, Any]) -> bool:
        heard.setdefault(message["topic"], message)
        return len(heard) == 2

    _next(sock, both_heard)

    assert subscribed["success"] is True
    (fast,) = heard["execution.fast"]["data"]
    (full,) = heard["execution"]["data"]
    assert set(fast) == {
        "category",
        "symbol",
        "isMaker",
        "execId",
        "execPrice",
        "execQty",
        "orderId",
        "orderLinkId",
        "side",
        "execTime",
        "seq",
    }
    assert {name: full[name] for name in fast} == fast
    assert (fast["orderLinkId"], fast["execQty"]) == ("fast-1", "0.01")
    assert full["execPnl"] == "0"  # an opening fill: the log's cashFlow is 0 too
    # Bybit's fast message is topic, creationTime and data: no `id`, which execution has.
    assert set(heard["execution.fast"]) == {"topic", "creationTime", "data"}
    assert isinstance(heard["execution.fast"]["creationTime"], int)
    assert isinstance(heard["execution"]["id"], str)


def test_fast_execution_hides_the_link_id_of_a_resting_order_amended_into_a_taker(
    raw: Callable[[str], websocket.WebSocket], http: HTTP
) -> None:
    """Bybit's Fast Execution page: orderLinkId is "" for a maker's trade and "if a maker
    order in the orderbook is converted to taker (by price amend)"; `execution` keeps it."""
    sock = raw("/v5/private")
    _authenticate(sock)
    _ask(sock, {"op": "subscribe", "args": ["order", "execution.fast", "execution"]})
    http.place_order(
        category="linear",
        symbol="BTCUSDT",
        side="Buy",
        orderType="Limit",
        qty="0.01",
        price="90000",
        orderLinkId="rests-1",
    )
    _next(sock, lambda m: m.get("topic") == "order")  # New: it rests on the book
    time.sleep(0.3)  # the matching engine has seen it
    http.amend_order(category="linear", symbol="BTCUSDT", orderLinkId="rests-1", price="97500")
    heard: dict[str, dict[str, Any]] = {}

    def both_heard(message: dict[str, Any]) -> bool:
        if message.get("topic") in ("execution.fast", "execution"):
            heard.setdefault(message["topic"], message)
        return len(heard) == 2

    _next(sock, both_heard)

    (fast,) = heard["execution.fast"]["data"]
    (full,) = heard["execution"]["data"]
    assert (fast["isMaker"], full["isMaker"]) == (False, False)  # it took liquidity
    assert fast["orderLinkId"] == ""
    assert full["orderLinkId"] == "rests-1"
    assert fast["execId"] == full["execId"]


def test_all_liquidation_pushes_each_position_the_engine_takes_over(
    server: SimServer, raw: Callable[[str], websocket.WebSocket], http: HTTP
) -> None:
    sock = raw("/v5/public/linear")
    subscribed = _ask(sock, {"op": "subscribe", "args": ["allLiquidation.BTCUSDT"]})
    unknown = _ask(sock, {"op": "subscribe", "args": ["allLiquidation.NOPEUSDT"]})
    http.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="1")
    eventually(
        lambda: http.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0],
        lambda row: row["size"] == "1",
        "the long",
    )

    _post(server, "/sim/prices", {"BTCUSDT": 80000})
    pushed = json.loads(sock.recv())

    assert subscribed["success"] is True and unknown["success"] is False
    assert (pushed["topic"], pushed["type"]) == ("allLiquidation.BTCUSDT", "snapshot")
    (row,) = pushed["data"]
    assert (row["s"], row["S"], row["v"]) == ("BTCUSDT", "Buy", "1")  # a long taken over
    assert float(row["p"]) > 80000 and isinstance(row["T"], int)


def test_the_trade_websocket_answers_in_bybits_shapes(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    sock = raw("/v5/trade")
    now = int(time.time() * 1000)

    def order(
        req_id: object, op: str = "order.create", category: str = "linear", **header: str
    ) -> dict[str, Any]:
        item = {"category": category, "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit"}
        item |= {"qty": "0.01", "price": "90000"}
        stamp = {"X-BAPI-TIMESTAMP": str(int(time.time() * 1000))} | header
        return _ask(sock, {"reqId": req_id, "header": stamp, "op": op, "args": [item]})

    early = order("r0")
    auth = _ask(sock, {"op": "auth", "args": _auth_args(KEY, SECRET, now + 5000)})
    again = _ask(sock, {"op": "auth", "args": _auth_args(KEY, SECRET, now + 5000)})
    pong = _ask(sock, {"op": "ping"})
    created = order("r1")
    repeated = order("r1")
    unknown = order("r2", op="order.explode")
    stale = order("r3", **{"X-BAPI-TIMESTAMP": str(now - 60_000)})
    spot = order("r4", category="spot")
    odd_id = order({"not": "a string"})

    assert early["retCode"] == 10003 and early["reqId"] == "r0"
    assert auth == {"retCode": 0, "retMsg": "OK", "op": "auth", "connId": auth["connId"]}
    assert again["retCode"] == 20001
    assert (pong["retCode"], pong["op"]) == (0, "pong") and pong["data"][0].isdigit()
    assert (created["retCode"], created["retMsg"], created["op"]) == (0, "OK", "order.create")
    assert created["reqId"] == "r1" and created["data"]["orderId"]
    assert {"X-Bapi-Limit", "X-Bapi-Limit-Status", "Traceid", "Timenow"} <= set(created["header"])
    assert created["connId"] == auth["connId"]
    assert repeated["retCode"] == 20006
    assert unknown["retCode"] == 10404
    assert stale["retCode"] == 10002
    assert spot["retCode"] == 10404  # Bybit: "category is not correct/supported"
    assert odd_id["retCode"] == 10001


def test_pybits_trade_client_places_amends_and_cancels_batches(
    server: SimServer, http: HTTP
) -> None:
    answers: queue.Queue[dict[str, Any]] = queue.Queue()
    ws = SimWebSocketTrading(
        server.ws_url + "/v5/trade", testnet=False, api_key=KEY, api_secret=SECRET
    )

    def ask(send: Callable[..., None], *orders: dict[str, Any]) -> dict[str, Any]:
        send(answers.put, answers.put, category="linear", request=list(orders))
        return answers.get(timeout=5)

    def bid(link: str, price: str, qty: str = "0.01") -> dict[str, Any]:
        return {"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": qty} | {
            "price": price,
            "orderLinkId": link,
        }

    try:
        placed = ask(ws.place_batch_order, bid("wsb-0", "90000"), bid("wsb-1", "90001"))
        refused = ask(ws.place_batch_order, bid("wsb-2", "90002"), bid("wsb-3", "90003", "0"))
        amended = ask(
            ws.amend_batch_order, {"symbol": "BTCUSDT", "orderLinkId": "wsb-0"} | {"price": "89000"}
        )
        cancelled = ask(
            ws.cancel_batch_order,
            {"symbol": "BTCUSDT", "orderLinkId": "wsb-1"},
            {"symbol": "BTCUSDT", "orderLinkId": "no-such-order"},
        )
    finally:
        ws.exit()
    resting = http.get_open_orders(category="linear", symbol="BTCUSDT")["result"]["list"]

    assert (placed["retCode"], placed["op"]) == (0, "order.create-batch")
    assert [row["orderLinkId"] for row in placed["data"]["list"]] == ["wsb-0", "wsb-1"]
    assert all(row["orderId"] and row["createAt"].isdigit() for row in placed["data"]["list"])
    assert placed["retExtInfo"] == {"list": [{"code": 0, "msg": "OK"}] * 2}
    assert refused["retCode"] == 0  # each order succeeds or fails alone
    first, bad = refused["retExtInfo"]["list"]
    assert first["code"] == 0 and bad["code"] != 0
    assert (amended["retCode"], amended["retExtInfo"]["list"][0]["code"]) == (0, 0)
    done, missing = cancelled["retExtInfo"]["list"]
    assert (done["code"], missing["code"]) == (0, 110001)  # 110001: order does not exist
    assert sorted((row["orderLinkId"], row["price"]) for row in resting) == [
        ("wsb-0", "89000"),
        ("wsb-2", "90002"),
    ]


def test_a_trade_websocket_batch_counts_each_order_against_the_limit(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    sock = raw("/v5/trade")
    _authenticate(sock)
    orders = [
        {"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.01"}
        | {"price": str(90000 + index)}
        for index in range(12)
    ]
    header = {"X-BAPI-TIMESTAMP": str(int(time.time() * 1000))}
    request = {"category": "linear", "request": orders}

    answer = _ask(sock, {"header": header, "op": "order.create-batch", "args": [request]})

    codes = [item["code"] for item in answer["retExtInfo"]["list"]]
    assert answer["retCode"] == 0 and "reqId" not in answer
    assert codes == [0] * 10 + [10006] * 2  # linear create-batch: 10 orders a second
    assert answer["header"]["X-Bapi-Limit-Status"] == "0"


def test_the_trade_websocket_suffers_the_gateways_faults(
    server: SimServer, raw: Callable[[str], websocket.WebSocket], http: HTTP
) -> None:
    sock = raw("/v5/trade")
    _authenticate(sock)

    def send(op: str, item: dict[str, Any]) -> None:
        header = {"X-BAPI-TIMESTAMP": str(int(time.time() * 1000))}
        sock.send(json.dumps({"header": header, "op": op, "args": [item | {"category": "linear"}]}))

    order = {"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.01"}
    _post(server, "/sim/faults", {"drop_response_after_accept": 1.0})
    send("order.create", order | {"price": "90000", "orderLinkId": "lost-ack"})
    sock.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        sock.recv()  # done, and never answered
    sock.settimeout(5)
    _post(server, "/sim/faults", {"drop_response_after_accept": 0.0, "accept_then_10016": 1.0})
    send("order.cancel", {"symbol": "BTCUSDT", "orderLinkId": "lost-ack"})
    cancelled = json.loads(sock.recv())
    _post(server, "/sim/faults", {"accept_then_10016": 0.0, "rate_limit_10006": 1.0})
    send("order.create", order | {"price": "90000", "orderLinkId": "refused"})
    limited = json.loads(sock.recv())
    _post(server, "/sim/faults", {"rate_limit_10006": 0.0})
    long_id = _ask(sock, {"reqId": "x" * 37, "op": "order.cancel"})
    history = http.get_order_history(category="linear", orderLinkId="lost-ack")["result"]["list"]

    assert (cancelled["retCode"], cancelled["data"]) == (10016, {})
    assert [row["orderStatus"] for row in history] == ["Cancelled"]  # done all the same
    assert (limited["retCode"], limited["retMsg"]) == (10006, "Too many visits!")
    assert int(limited["header"]["X-Bapi-Limit-Reset-Timestamp"]) > int(
        limited["header"]["Timenow"]
    )
    assert [o for o in server.exchange.orders() if o["orderLinkId"] == "refused"] == []
    assert long_id["retCode"] == 10001 and "36" in long_id["retMsg"]


def test_the_trade_websocket_keeps_to_the_keys_bound_ips() -> None:
    bound = SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), ips=["10.1.2.3"])
    with SimServer(SimExchange(SimulatorConfig(seed=3, accounts=[bound]))) as running:
        sock = websocket.create_connection(running.ws_url + "/v5/trade", timeout=5)
        try:
            now = int(time.time() * 1000)
            _ask(sock, {"op": "auth", "args": _auth_args(KEY, SECRET, now + 5000)})
            item = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy"}
            item |= {"orderType": "Market", "qty": "0.01"}
            header = {"X-BAPI-TIMESTAMP": str(int(time.time() * 1000))}
            answer = _ask(sock, {"header": header, "op": "order.create", "args": [item]})
        finally:
            sock.close()
        created = running.exchange.orders()

    assert answer["retCode"] == 10010 and created == []


def test_unknown_public_topic_is_refused(raw: Callable[[str], websocket.WebSocket]) -> None:
    sock = raw("/v5/public/linear")

    answer = _ask(sock, {"op": "subscribe", "args": ["tickers.NOPEUSDT"]})
    pong = _ask(sock, {"op": "ping"})

    assert answer["success"] is False and "tickers.NOPEUSDT" in answer["ret_msg"]
    assert pong["success"] is True and pong["ret_msg"] == "pong" and pong["op"] == "ping"


# ----------------------------------------------------------------- faults and admin routes


def test_the_drop_route_cuts_connections_and_the_client_sees_it(
    server: SimServer, open_ws: Callable[..., SimWebSocket]
) -> None:
    ws = open_ws("private", api_key=KEY, api_secret=SECRET)
    ws.order_stream(_Collector())
    listed = eventually(lambda: _connections(server), lambda c: len(c) == 1, "the connection")

    dropped = _post(server, "/sim/streams/drop", {"api_key": "someone-else"})
    assert dropped == {"dropped": 0}
    dropped = _post(server, "/sim/streams/drop", {"api_key": KEY})

    assert dropped == {"dropped": 1}
    eventually(ws.is_connected, lambda connected: not connected, "the client to see the drop")
    eventually(lambda: _connections(server), lambda c: c == [], "the server to forget it")
    assert listed[0]["userID"] > 0 and listed[0]["note"] == "main"
    assert KEY not in json.dumps(listed)
    stats = requests.get(server.url + "/sim/stats", timeout=5).json()
    assert stats["stream_connections_dropped"] == 1


def test_stream_drop_fault_cuts_on_a_pushed_message(
    server: SimServer, raw: Callable[[str], websocket.WebSocket]
) -> None:
    sock = raw("/v5/public/linear")
    _post(server, "/sim/faults", {"stream_drop": 1.0})

    sock.send(json.dumps({"op": "subscribe", "args": ["tickers.BTCUSDT"]}))
    sock.recv()  # the answer is not a push; the snapshot is, and is never sent

    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        sock.recv()
    faults = requests.get(server.url + "/sim/stats", timeout=5).json()["faults_injected"]
    assert faults["stream_drop"] == 1


# ----------------------------------------------------------------- hedge mode


def test_hedge_mode_lists_two_rows_and_refuses_position_idx_0(server: SimServer) -> None:
    session = HTTP(api_key=HEDGE_KEY, api_secret=SECRET, timeout=5, max_retries=1)
    session.endpoint = server.url

    rows = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"]
    answer = _signed_create(server, HEDGE_KEY, {"positionIdx": 0})
    one_way = _signed_create(server, KEY, {"positionIdx": 1})
    session.client.close()

    assert [(row["positionIdx"], row["symbol"]) for row in rows] == [
        (1, "BTCUSDT"),
        (2, "BTCUSDT"),
    ]
    assert (answer["retCode"], answer["retMsg"]) == (10001, "position idx not match position mode")
    assert (one_way["retCode"], one_way["retMsg"]) == (
        10001,
        "position idx not match position mode",
    )


def _signed_create(server: SimServer, key: str, extra: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(
        {
            "category": "linear",
            "symbol": "BTCUSDT",
            "side": "Buy",
            "orderType": "Market",
            "qty": "0.001",
            **extra,
        }
    )
    timestamp, window = str(int(time.time() * 1000)), "5000"
    signature = hmac.new(
        SECRET.encode(), f"{timestamp}{key}{window}{body}".encode(), hashlib.sha256
    ).hexdigest()
    headers = {
        "X-BAPI-API-KEY": key,
        "X-BAPI-TIMESTAMP": timestamp,
        "X-BAPI-RECV-WINDOW": window,
        "X-BAPI-SIGN": signature,
        "Content-Type": "application/json",
    }
    answer = requests.post(server.url + "/v5/order/create", data=body, headers=headers, timeout=5)
    result: dict[str, Any] = answer.json()
    return result


@pytest.mark.parametrize(
    ("channel", "query", "alive_s"),
    [
        ("private", b"", 600.0),
        ("private", b"max_active_time=45s", 45.0),
        ("trade", b"max_active_time=2m", 120.0),
        ("private", b"max_active_time=5s", 30.0),  # Bybit's least
        ("private", b"max_active_time=30m", 600.0),  # and most
        ("private", b"max_active_time=soon", 600.0),
        ("linear", b"max_active_time=45s", 600.0),  # private and order entry only
    ],
)
def test_max_active_time_sets_how_long_a_quiet_connection_lives(
    channel: Channel, query: bytes, alive_s: float
) -> None:
    assert _alive_s(channel, query, 600.0) == alive_s


def test_a_connection_without_ping_pong_or_data_is_closed_and_one_that_pings_is_not() -> None:
    config = SimulatorConfig(
        seed=3,
        accounts=[SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET))],
        stream_idle_cutoff_s=0.6,
    )
    with SimServer(SimExchange(config)) as server:
        quiet = websocket.create_connection(server.ws_url + "/v5/private", timeout=5)
        pinging = websocket.create_connection(server.ws_url + "/v5/private", timeout=5)
        try:
            for _ in range(8):  # 1.6 s: past the cut-off, were its pongs not data sent
                assert _ask(pinging, {"op": "ping"})["op"] == "pong"
                time.sleep(0.2)
            quiet.settimeout(3)
            closed = quiet.recv_data()[0] == websocket.ABNF.OPCODE_CLOSE
        finally:
            quiet.close()
            pinging.close()

    assert closed


def test_a_client_that_pings_and_never_reads_is_not_read_either(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    """The pongs a client does not read stop the server reading its pings, so that it
    buffers no more than a socket's worth of them (not all it is sent); others are served."""
    flooding = raw("/v5/public/linear")
    pings = websocket.ABNF.create_frame(b"x" * 125, websocket.ABNF.OPCODE_PING).format() * 8000
    flooding.sock.settimeout(2)
    sent = 0
    try:
        while sent < 128 * 2**20:  # were every ping read and its pong kept: 128 MiB of them
            flooding.sock.sendall(pings)
            sent += len(pings)
    except TimeoutError:  # the server stopped reading
        pass
    assert sent < 64 * 2**20

    assert _ask(raw("/v5/public/linear"), {"op": "ping"})["ret_msg"] == "pong"


def test_level_1_books_put_ts_before_type_and_the_deeper_ones_after_it(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    """Bybit's Orderbook page: for futures "the "ts" field appears before the "type" field"
    at level 1, after it at every other level (the raw text, as an order-keeping parser
    reads it)."""
    sock = raw("/v5/public/linear")
    _ask(sock, {"op": "subscribe", "args": ["orderbook.1.BTCUSDT", "orderbook.50.BTCUSDT"]})
    keys: dict[str, list[str]] = {}
    while len(keys) < 2:
        message = json.loads(sock.recv())  # dicts keep the text's order
        keys.setdefault(message["topic"], list(message))

    assert keys["orderbook.1.BTCUSDT"] == ["topic", "ts", "type", "data", "cts"]
    assert keys["orderbook.50.BTCUSDT"] == ["topic", "type", "ts", "data", "cts"]


# ----------------------------------------------------------------- hostile clients


class _StalledLoop:
    """A server loop that is busy: it only records what it is asked to run."""

    def __init__(self) -> None:
        self.callbacks: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def call_soon_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        self.callbacks.append((callback, args))


def test_price_moves_a_busy_loop_has_not_delivered_wait_as_one_the_latest() -> None:
    """A walk faster than the loop can push piled up a callback per move (memory grew by
    20 MB/s and no request was answered): now one delivery per symbol waits, the latest."""
    exchange = SimExchange(SimulatorConfig(seed=3))
    hub = StreamHub(exchange)
    loop = _StalledLoop()
    hub._loop = loop  # type: ignore[assignment]
    delivered: list[tuple[str, int, dict[str, str]]] = []
    hub._deliver_market_data = (  # type: ignore[method-assign]
        lambda symbol, cs, row, ts: delivered.append((symbol, cs, row))
    )

    for cs in range(1, 1001):
        hub.price_moved("BTCUSDT", cs, {"lastPrice": str(cs)})
    hub.price_moved("ETHUSDT", 7, {"lastPrice": "7"})
    for callback, args in list(loop.callbacks):
        callback(*args)
    hub.price_moved("BTCUSDT", 1001, {"lastPrice": "1001"})

    assert delivered == [
        ("BTCUSDT", 1000, {"lastPrice": "1000"}),
        ("ETHUSDT", 7, {"lastPrice": "7"}),
    ]
    assert len(loop.callbacks) == 3  # the move after a delivery is scheduled anew


def test_a_client_that_never_reads_is_cut_once_its_queue_holds_too_many_bytes() -> None:
    """10 000 messages was the only bound: a client that never read held 10 000 deltas of
    the 1000-level book, about 500 MB."""
    config = SimulatorConfig(seed=3, stream_queue_max_bytes=1024 * 1024)
    with SimServer(SimExchange(config)) as server:
        idle = websocket.create_connection(
            server.ws_url + "/v5/public/linear",
            timeout=5,
            sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)],
        )
        try:
            idle.send(json.dumps({"op": "subscribe", "args": ["orderbook.1000.BTCUSDT"]}))
            eventually(lambda: _connections(server), lambda c: len(c) == 1, "the subscription")
            for move in range(300):  # each moves all 2000 levels: a delta of ~50 KB
                _post(server, "/sim/prices", {"BTCUSDT": 97000 + move % 2 * 500})
                if not _connections(server):
                    break
            stats = requests.get(server.url + "/sim/stats", timeout=5).json()
        finally:
            idle.close()

    assert stats["stream_connections"] == 0
    assert stats["stream_connections_dropped"] == 1


def test_a_message_longer_than_any_command_closes_the_connection_1009(
    raw: Callable[[str], websocket.WebSocket],
) -> None:
    """uvicorn's 16 MiB default let every connection hold a 16 MiB frame (1000 of them:
    16 GB), and unmasking one stalled the other clients. The rest of the message is read and
    dropped, so that the close frame reaches the client (not a connection reset)."""
    sock = raw("/v5/public/linear")

    sock.send(json.dumps({"op": "ping", "req_id": "x" * 8 * MAX_REQUEST_BYTES}))
    opcode, payload = sock.recv_data(control_frame=True)

    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(payload[:2], "big") == 1009
    assert _ask(raw("/v5/public/linear"), {"op": "ping"})["ret_msg"] == "pong"
