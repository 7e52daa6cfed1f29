"""Every number an order carries lands on the instrument's grid, never against the trader."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from bot.execution.rounding import conform, grid_moves
from bot.messages import Instrument, OrderType, Side
from tests.factories import make_intent

BTC = Instrument(
    symbol="BTCUSDT",
    qty_step=Decimal("0.001"),
    min_order_qty=Decimal("0.001"),
    max_order_qty=Decimal(1190),
    tick_size=Decimal("0.1"),
    min_notional_usdt=Decimal(5),
    max_market_order_qty=Decimal(500),
)
prices = st.decimals(min_value=Decimal(1000), max_value=Decimal(200000), places=4)
quantities = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(5), places=6)


@given(side=st.sampled_from(Side), price=prices, stop=prices, target=prices, qty=quantities)
def test_rounding_never_worsens_the_traders_risk(
    side: Side, price: Decimal, stop: Decimal, target: Decimal, qty: Decimal
) -> None:
    intent = make_intent(
        side=side,
        order_type=OrderType.LIMIT,
        price=price,
        reference_price=price,
        qty=qty,
        stop_loss=stop,
        take_profit=target,
    )

    result = conform(intent, BTC, price)

    if isinstance(result, str):  # declined only when the rounded order is truly too small
        rounded = (qty // BTC.qty_step) * BTC.qty_step
        assert rounded < BTC.min_order_qty or rounded * price < 5 + rounded * BTC.tick_size
        return
    buy = side is Side.BUY
    assert result.price is not None and result.stop_loss is not None
    assert result.qty <= qty and result.qty % BTC.qty_step == 0
    for value in (result.price, result.stop_loss, result.take_profit):
        assert value is not None and value % BTC.tick_size == 0
    assert (result.price <= price) if buy else (result.price >= price)  # never pay more
    assert (result.stop_loss >= stop) if buy else (result.stop_loss <= stop)  # lose no more
    assert result.take_profit is not None
    assert (result.take_profit <= target) if buy else (result.take_profit >= target)
    assert abs(result.price - price) < BTC.tick_size
    assert abs(result.stop_loss - stop) < BTC.tick_size


def test_an_order_below_the_minimum_qty_is_declined_with_the_numbers() -> None:
    reason = conform(make_intent(qty=Decimal("0.0004")), BTC, Decimal(97000))

    assert reason == "qty 0.0004 rounds to 0.000, below the minimum order qty 0.001 of BTCUSDT"


def test_an_order_below_the_minimum_value_is_declined_at_the_venue_price() -> None:
    intent = make_intent(qty=Decimal("0.001"), reference_price=Decimal(97000))

    reason = conform(intent, BTC, Decimal(3000))  # whatever the strategy claims

    assert isinstance(reason, str) and "order value 3.00 USDT is below the minimum 5" in reason


def test_a_market_order_is_valued_at_the_venue_price_not_the_strategy_claim() -> None:
    result = conform(make_intent(reference_price=Decimal(1)), BTC, Decimal(97000))

    assert not isinstance(result, str) and result.reference_price == 97000


def test_a_reduce_only_close_is_exempt_from_the_minimum_value() -> None:
    intent = make_intent(qty=Decimal("0.001"), reduce_only=True)

    assert not isinstance(conform(intent, BTC, Decimal(3000)), str)


def test_an_order_above_its_types_maximum_is_trimmed_to_it() -> None:
    market = conform(make_intent(qty=Decimal(700)), BTC, Decimal(97000))
    limit = conform(
        make_intent(
            qty=Decimal(1500),
            order_type=OrderType.LIMIT,
            price=Decimal(96000),
            reference_price=Decimal(96000),
        ),
        BTC,
        Decimal(97000),
    )

    assert not isinstance(market, str) and market.qty == 500  # maxMktOrderQty
    assert not isinstance(limit, str) and limit.qty == 1190  # maxOrderQty


def test_what_the_grid_moved_is_said_with_the_numbers_the_strategy_sent() -> None:
    # A probe's stop of 96999.99 was refused as "stop 97000.0 must be below the entry
    # 97000": the gate names the grid's numbers, so the rejection says what moved.
    sent = make_intent(side=Side.BUY, qty=Decimal("0.0055"), stop_loss=Decimal("96999.99"))
    conformed = conform(sent, BTC, Decimal(97000))
    assert not isinstance(conformed, str)

    assert grid_moves(sent, conformed) == "qty 0.0055 to 0.005, stop 96999.99 to 97000.0"
    assert grid_moves(conformed, conformed) == ""
