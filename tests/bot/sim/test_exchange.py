"""SimExchange and its configuration, called directly: the rules behind the HTTP answers."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from bot.sim import (
    DuplicateAccountError,
    InstrumentSpec,
    RetCode,
    SimAccountSpec,
    SimError,
    SimExchange,
    SimServer,
    SimulatorConfig,
)
from bot.sim import views as sim_views
from bot.sim.params import (
    OrderQueryParams,
    PlaceOrderParams,
)
from tests.bot.sim.kit import position_row, wallet_row

KEY = "unit-key"


FILL_DELAY_MS = 5


@pytest.fixture
def exchange() -> SimExchange:
    """An exchange without a server: its engine moves only when a test calls advance()."""
    return SimExchange(
        SimulatorConfig(
            accounts=[SimAccountSpec(api_key=KEY, api_secret=SecretStr("s"))],
            market_fill_delay_ms=FILL_DELAY_MS,
        )
    )


def _place(exchange: SimExchange, **fields: Any) -> dict[str, Any]:
    """Place an order and let the engine take it (fill, rest or cancel)."""
    acknowledged = _submit(exchange, **fields)
    exchange.advance(FILL_DELAY_MS)
    return acknowledged


def _submit(exchange: SimExchange, **fields: Any) -> dict[str, Any]:
    """Place an order and return the acknowledgement; the engine has not seen it yet."""
    request = {"category": "linear", "symbol": "BTCUSDT", "orderType": "Market", **fields}
    return exchange.place_order(KEY, PlaceOrderParams.model_validate(request))


def _order(exchange: SimExchange, order_id: str) -> dict[str, Any]:
    query = OrderQueryParams.model_validate({"category": "linear", "orderId": order_id})
    found: dict[str, Any] = exchange.open_orders(KEY, query)["list"][0]
    return found


# ------------------------------------------------------------------ configuration


_XRP = InstrumentSpec(
    tick_size=Decimal("0.0001"),
    qty_step=Decimal(1),
    min_order_qty=Decimal(1),
    max_order_qty=Decimal(10**6),
    min_notional_usdt=Decimal(5),
)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"instruments": {"XRPUSDT": _XRP}},
            re.escape("no starting price for listed symbol(s) ['XRPUSDT']"),
        ),
        ({"prices": {"BTCUSDT": Decimal(1), "btcusdt": Decimal(2)}}, "given twice"),
        ({"prices": {"BTCUSDT": Decimal(1), "ETHUSDT": 1, "SOLUSDT": 1, "XRPUSDT": 1}}, "XRPUSDT"),
        ({"default_leverage": Decimal(500)}, "max_leverage"),
        ({"prices": {"BTCUSDT": 0, "ETHUSDT": 1, "SOLUSDT": 1}}, "greater than 0"),
        ({"order_create_per_s": 0}, "order_create_per_s"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_inconsistent_config_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SimulatorConfig(**fields)


def test_instrument_rules_must_be_consistent() -> None:
    with pytest.raises(ValidationError, match="multiple of qty_step"):
        InstrumentSpec(
            tick_size=Decimal("0.1"),
            qty_step=Decimal("0.01"),
            min_order_qty=Decimal("0.015"),
            max_order_qty=Decimal(10),
            min_notional_usdt=Decimal(5),
        )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ips": ["not-an-ip"]}, "not-an-ip"),
        ({"permissions": {"Withdraw": ["All"]}}, "Withdraw"),
        ({"api_key": "has space"}, "api_key"),
    ],
)
def test_invalid_account_specs_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SimAccountSpec(**{"api_key": "k", "api_secret": SecretStr("s"), **fields})


def test_naive_expiry_is_read_as_utc() -> None:
    spec = SimAccountSpec(api_key="k", api_secret=SecretStr("s"), expired_at=datetime(2030, 1, 1))

    assert spec.expired_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_secret_never_shows_in_the_spec_repr() -> None:
    spec = SimAccountSpec(api_key="k", api_secret=SecretStr("very-secret"))

    assert "very-secret" not in repr(spec)


def test_an_api_key_is_added_once(exchange: SimExchange) -> None:
    with pytest.raises(DuplicateAccountError):
        exchange.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr("other")))


# ------------------------------------------------------------------ prices


@pytest.mark.parametrize(
    "prices",
    [
        {"BTCUSDT": 97000.5},
        {"BTCUSDT": True},
        {"BTCUSDT": "NaN"},
        {"BTCUSDT": Decimal(1), "NOPE": Decimal(2)},
    ],
)
def test_bad_prices_change_nothing(exchange: SimExchange, prices: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        exchange.set_prices(prices)

    assert exchange.prices()["BTCUSDT"] == Decimal(97000)


# ------------------------------------------------------------------ orders and positions


def test_flipping_a_position_realises_the_closed_part_and_reopens_at_the_fill_price(
    exchange: SimExchange,
) -> None:
    _place(exchange, side="Buy", qty="0.02")
    exchange.set_prices({"BTCUSDT": Decimal(98000)})

    _place(exchange, side="Sell", qty="0.03")

    # Bought at the ask (the last price), sold at the bid a tick (0.1) under the new one.
    position = position_row(exchange, KEY)
    assert (position["side"], position["size"], position["avgPrice"]) == ("Sell", "0.01", "97999.9")
    fees = (Decimal("0.02") * 97000 + Decimal("0.03") * Decimal("97999.9")) * Decimal("0.00055")
    assert Decimal(position["cumRealisedPnl"]) == Decimal("19.998") - fees


def test_resting_limit_orders_reserve_margin(exchange: SimExchange) -> None:
    _place(exchange, side="Buy", qty="0.1", orderType="Limit", price="90000")

    wallet = wallet_row(exchange, KEY)

    assert wallet["totalAvailableBalance"] == "9100"  # 9000 USDT notional at 10x
    assert wallet["coin"][0]["totalOrderIM"] == "900"


@pytest.mark.parametrize(
    ("time_in_force", "price", "reason"),
    [
        ("PostOnly", "98000", "EC_PostOnlyWillTakeLiquidity"),
        ("IOC", "96000", "EC_NoImmediateQtyToFill"),
        ("FOK", "96000", "EC_NoEnoughQtyToFill"),
    ],
)
def test_time_in_force_cancels_what_cannot_trade_as_asked(
    exchange: SimExchange, time_in_force: str, price: str, reason: str
) -> None:
    placed = _place(
        exchange,
        side="Buy",
        qty="0.01",
        orderType="Limit",
        price=price,
        timeInForce=time_in_force,
    )

    order = _order(exchange, placed["orderId"])
    assert (order["orderStatus"], order["rejectReason"], order["cumExecQty"]) == (
        "Cancelled",
        reason,
        "0",
    )


def test_a_resting_reduce_only_order_is_cancelled_when_its_position_is_gone(
    exchange: SimExchange,
) -> None:
    _place(exchange, side="Buy", qty="0.01")
    resting = _place(
        exchange, side="Sell", qty="0.01", orderType="Limit", price="99000", reduceOnly=True
    )
    _place(exchange, side="Sell", qty="0.01")

    exchange.set_prices({"BTCUSDT": Decimal(99500)})

    order = _order(exchange, resting["orderId"])
    assert (order["orderStatus"], order["cancelType"]) == ("Cancelled", "CancelByReduceOnly")
    assert order["rejectReason"] == "EC_NoError"  # EC_PerCancelRequest is its owner's cancel
    assert position_row(exchange, KEY)["size"] == "0"


def test_take_profit_of_a_short_triggers_when_the_price_falls(exchange: SimExchange) -> None:
    _place(exchange, side="Sell", qty="0.01", takeProfit="90000")

    exchange.set_prices({"BTCUSDT": Decimal(89000)})
    exchange.advance(FILL_DELAY_MS)

    closing = exchange.orders(KEY)[-1]
    assert (closing["stopOrderType"], closing["side"], closing["avgPrice"]) == (
        "TakeProfit",
        "Buy",
        "89000",
    )
    assert position_row(exchange, KEY)["size"] == "0"


def test_placing_for_an_unknown_key_is_10003(exchange: SimExchange) -> None:
    request = PlaceOrderParams.model_validate(
        {
            "category": "linear",
            "symbol": "BTCUSDT",
            "side": "Buy",
            "orderType": "Market",
            "qty": "1",
        }
    )

    with pytest.raises(SimError) as caught:
        exchange.place_order("ghost", request)

    assert caught.value.ret_code is RetCode.INVALID_API_KEY


def test_prices_can_move_from_other_threads_while_orders_trade(exchange: SimExchange) -> None:
    levels = [Decimal(96000 + step * 10) for step in range(200)]
    failures: list[BaseException] = []

    def move_prices() -> None:
        try:
            for level in levels:
                exchange.set_prices({"BTCUSDT": level})
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    movers = [threading.Thread(target=move_prices) for _ in range(3)]
    exchange.start_engine()
    for mover in movers:
        mover.start()
    for number in range(100):
        _submit(exchange, side="Buy" if number % 2 else "Sell", qty="0.001")
    for mover in movers:
        mover.join()
    exchange.stop_engine()
    exchange.advance(FILL_DELAY_MS)

    assert failures == []
    orders = exchange.orders(KEY)
    assert len(orders) == 100
    # The three movers take turns, so the price can jump 2 % between an order's price limit
    # (set when it is placed) and its match: that order is cancelled unfilled, as on Bybit.
    # Every order ended one way or the other, and the position is what the fills add up to.
    outcomes = {(order["orderStatus"], order["rejectReason"]) for order in orders}
    assert outcomes <= {("Filled", "EC_NoError"), ("Cancelled", "EC_NoImmediateQtyToFill")}
    net = sum(
        Decimal(order["cumExecQty"]) * (1 if order["side"] == "Buy" else -1) for order in orders
    )
    position = position_row(exchange, KEY)
    held = Decimal(position["size"]) * (-1 if position["side"] == "Sell" else 1)
    assert held == net


# ------------------------------------------------------------------ server lifecycle


def test_server_reports_the_port_it_bound_and_stops_cleanly(exchange: SimExchange) -> None:
    server = SimServer(exchange)
    with pytest.raises(RuntimeError, match="not been started"):
        _ = server.port

    server.start()
    port = server.port
    engine_ran = exchange.engine_running
    server.stop()
    server.stop()

    assert (engine_ran, exchange.engine_running) == (True, False)
    assert port > 0
    assert server.url == f"http://127.0.0.1:{port}"


def test_binding_a_taken_port_fails_clearly(exchange: SimExchange) -> None:
    with SimServer(exchange) as first:
        taken = SimServer(exchange, port=first.port)

        with pytest.raises(RuntimeError, match="cannot bind"):
            taken.start()


def test_an_order_that_could_take_the_position_past_its_risk_limit_is_110090() -> None:
    """Bybit's position limit: the position with the side's resting orders and the new one
    filled, at most the risk limit's value (2,000,000 USDT, the one tier served); an order
    that reduces the position passes."""
    exchange = SimExchange(
        SimulatorConfig(
            accounts=[
                SimAccountSpec(
                    api_key=KEY, api_secret=SecretStr("s"), balance_usdt=Decimal(1_000_000)
                )
            ],
            market_fill_delay_ms=FILL_DELAY_MS,
        )
    )
    _place(exchange, side="Buy", qty="15")  # 1,455,000 USDT at 97000
    _place(exchange, side="Buy", qty="6", orderType="Limit", price="90000")  # 21 x 90000

    with pytest.raises(SimError) as caught:
        _submit(exchange, side="Buy", qty="2", orderType="Limit", price="90000")  # 23 x 90000

    assert caught.value.ret_code is RetCode.POSITION_LIMIT_EXCEEDED
    assert "your position may exceed the max limit" in str(caught.value)
    _place(exchange, side="Sell", qty="5")  # reducing: allowed
    assert position_row(exchange, KEY)["size"] == "10"


def test_the_501st_active_order_in_a_symbol_is_110020(exchange: SimExchange) -> None:
    for _ in range(500):
        _submit(exchange, side="Buy", qty="0.001", orderType="Limit", price="90000")
    exchange.advance(FILL_DELAY_MS)

    with pytest.raises(SimError) as caught:
        _submit(exchange, side="Buy", qty="0.001", orderType="Limit", price="90000")
    other = _submit(
        exchange, symbol="ETHUSDT", side="Buy", qty="0.1", orderType="Limit", price="3000"
    )

    assert caught.value.ret_code is RetCode.TOO_MANY_ACTIVE_ORDERS
    assert other["orderId"]  # the cap is per symbol


def test_the_book_works_its_sizes_out_once_not_on_every_read(
    exchange: SimExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream reads the 1000-level book on every price move; hashing its 2000 sizes
    (fixed per level) each time was two thirds of the read."""
    before = exchange.book("BTCUSDT", 1000)
    hashed: list[tuple[object, ...]] = []
    unit = sim_views.unit

    def counted(*parts: object) -> Decimal:
        hashed.append(parts)
        return unit(*parts)

    monkeypatch.setattr(sim_views, "unit", counted)
    exchange.set_prices({"BTCUSDT": Decimal(98000)})

    after = exchange.book("BTCUSDT", 1000)

    assert hashed == []
    assert after["b"][0][0] != before["b"][0][0]
    assert [size for _, size in after["b"]] == [size for _, size in before["b"]]
    assert [size for _, size in after["a"]] == [size for _, size in before["a"]]
