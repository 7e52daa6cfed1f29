"""Follow: risk-based sizing, capped, rounded to the lot, and honest declines."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from bot.messages import Decline, OrderType, Side, Signal, parse_signal
from strategies.follow import Follow
from tests.strategies.contexts import context, open_order

MARKET = context()


def follow(risk: str = "0.01", cap: str = "100000") -> Follow:
    return Follow(
        "follow", Follow.Params(risk_fraction=Decimal(risk), max_notional_usdt=Decimal(cap))
    )


def signal(**fields: object) -> Signal:
    body: dict[str, object] = {
        "id": "s1",
        "symbol": "BTCUSDT",
        "side": "buy",
        "ts": datetime.now(UTC).isoformat(),
    }
    body.update(fields)
    return parse_signal("voiceofchain", body)


def test_market_buy_risks_the_fraction_between_last_price_and_stop() -> None:
    [intent] = follow().on_signal(signal(stop_loss=95000), MARKET)  # type: ignore[misc]

    # 1% of 10000 = 100 USDT over 2000 USDT per BTC = 0.05 BTC
    assert intent.qty == Decimal("0.050")
    assert intent.order_type is OrderType.MARKET
    assert intent.reference_price == Decimal(97000)
    assert intent.stop_loss == Decimal(95000)
    assert (intent.strategy, intent.signal_id, intent.leg) == ("follow", "s1", 0)


def test_size_is_capped_by_max_notional_and_rounded_down() -> None:
    [intent] = follow(cap="1000").on_signal(signal(stop_loss=95000), MARKET)  # type: ignore[misc]

    assert intent.qty == Decimal("0.010")  # 1000 / 97000 = 0.01030.. → 0.010
    assert intent.notional_usdt <= Decimal(1000)


def test_entry_makes_a_limit_order_with_the_nearest_valid_target() -> None:
    out = follow().on_signal(
        signal(side="sell", entry=98000.04, stop_loss=99000, take_profit=[99500, 96000, 94000]),
        MARKET,
    )

    [intent] = out  # type: ignore[misc]
    assert intent.side is Side.SELL
    assert intent.order_type is OrderType.LIMIT
    assert intent.price == Decimal("98000.1")  # a sell's limit on the tick: never below the ask
    assert intent.take_profit == Decimal(96000)


def test_a_target_is_rounded_toward_the_entry_and_judged_against_the_price_sent() -> None:
    # Entry 97000.04 goes out as a buy at 97000.0; 97000.08 would round to 97000.0, no profit
    # at all (Bybit refuses a buy's take profit at its price), so 97100.06 is the first target,
    # rounded down: a long's target is never moved out of reach.
    out = follow().on_signal(
        signal(entry=97000.04, stop_loss=96000, take_profit=[97000.08, 97100.06]), MARKET
    )

    [intent] = out  # type: ignore[misc]
    assert (intent.price, intent.take_profit) == (Decimal("97000.0"), Decimal("97100.0"))
    assert intent.qty == Decimal("0.100")  # 1% of 10000 over the 1000 between 97000.0 and stop


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "no stop_loss"),
        ({"stop_loss": 98000}, "wrong side"),
        ({"stop_loss": 1}, "below the minimum order qty"),
    ],
)
def test_declines_say_why(fields: dict[str, object], reason: str) -> None:
    out = follow(risk="0.0001").on_signal(signal(**fields), MARKET)

    assert isinstance(out, Decline)
    assert reason in out.reason


def test_close_flattens_the_position_reduce_only() -> None:
    close = signal(side=None, action="close")
    [intent] = follow().on_signal(close, context(position_qty="-0.2"))  # type: ignore[misc]
    flat = follow().on_signal(close, context(position_qty=0))

    assert (intent.side, intent.qty, intent.reduce_only) == (Side.BUY, Decimal("0.2"), True)
    assert isinstance(flat, Decline)


@pytest.mark.parametrize(("held", "qty"), [("-0.030", "0.080"), ("0.030", "0.050"), ("0", "0.050")])
def test_a_signal_against_the_position_flips_it_in_one_order(held: str, qty: str) -> None:
    # Short 0.030: the buy also closes it, so the venue turns it into the 0.050 long.
    # Long already (adding) or flat: the risk-sized 0.050 alone.
    [intent] = follow().on_signal(signal(stop_loss=95000), context(position_qty=held))  # type: ignore[misc]

    assert (intent.side, intent.qty, intent.reduce_only) == (Side.BUY, Decimal(qty), False)
    assert intent.stop_loss == Decimal(95000)


def test_a_flip_above_the_max_order_qty_is_declined_with_what_to_do() -> None:
    out = follow().on_signal(signal(side="sell", stop_loss=99000), context(position_qty="99.980"))

    assert isinstance(out, Decline)
    assert "takes one order of 100.030, above the max order qty 100" in out.reason
    assert "close it first with a close signal" in out.reason


def test_a_limit_entry_against_the_position_is_declined_not_left_resting_as_a_flip() -> None:
    # Left resting, an order of both sizes would open both if the short closed meanwhile.
    out = follow().on_signal(signal(entry=96000, stop_loss=95000), context(position_qty="-0.030"))

    assert isinstance(out, Decline)
    assert "a limit entry cannot flip the -0.03 BTCUSDT position" in out.reason


def test_no_flip_while_the_strategys_orders_in_the_symbol_are_unfinished() -> None:
    # The earlier flip, not filled yet: the position it changes is not booked.
    earlier = open_order("follow-0-earlier", Side.BUY, "0.080")
    out = follow().on_signal(
        signal(stop_loss=95000), context(position_qty="-0.030", open_orders=(earlier,))
    )

    assert isinstance(out, Decline)
    assert "while 1 of the strategy's orders in it are unfinished" in out.reason


def test_leverage_hint_is_capped() -> None:
    strategy = Follow("follow", Follow.Params(max_leverage=Decimal(3)))
    [high] = strategy.on_signal(signal(stop_loss=95000, leverage=20), MARKET)  # type: ignore[misc]
    [low] = strategy.on_signal(signal(stop_loss=95000, leverage=2), MARKET)  # type: ignore[misc]
    [none] = strategy.on_signal(signal(stop_loss=95000), MARKET)  # type: ignore[misc]

    assert (high.leverage, low.leverage, none.leverage) == (Decimal(3), Decimal(2), None)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="risk_fraction"):
        Follow.Params(risk_fraction=Decimal("0.5"))
