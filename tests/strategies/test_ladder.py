"""TakeProfitLadder: the entry, the split across targets, the legs and the break-even move."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.messages import (
    Decline,
    Instrument,
    OrderIntent,
    OrderType,
    Side,
    Signal,
    StopMove,
    parse_signal,
)
from strategies.base import Fill, OpenOrder, StrategyContext
from strategies.ladder import TakeProfitLadder, split
from tests.strategies.contexts import context, open_order

MARKET = context()  # BTCUSDT at 97000, equity 10000, lot 0.001


def holding(qty: str | Decimal) -> StrategyContext:
    """The market with the strategy holding `qty` BTCUSDT (negative: short) from 97000."""
    return context(position_qty=qty, entry_price=97000)


def ladder(**params: object) -> TakeProfitLadder:
    fields: dict[str, object] = {"max_notional_usdt": Decimal(100000)} | params
    return TakeProfitLadder("ladder", TakeProfitLadder.Params.model_validate(fields))


def signal(**fields: object) -> Signal:
    body: dict[str, object] = {
        "id": "s1",
        "symbol": "BTCUSDT",
        "side": "buy",
        "stop_loss": 95000,
        "take_profit": [98000, 99000],
        "ts": datetime.now(UTC).isoformat(),
    }
    body.update(fields)
    return parse_signal("voiceofchain", body)


def fill(
    leg: int,
    qty: str,
    *,
    order_qty: str | None = None,
    filled: str | None = None,
    side: Side = Side.BUY,
    price: int = 97000,
    position_after: str | None = None,
) -> Fill:
    """A fill of `qty` of leg `leg`; the order is `order_qty` (default: `qty`), `filled` of it
    done so far (default: all of it); the strategy's position once it was booked, if known."""
    order = Decimal(order_qty or qty)
    return Fill(
        order_link_id=f"ladder-{leg}-x",
        leg=leg,
        symbol="BTCUSDT",
        side=side,
        qty=Decimal(qty),
        price=Decimal(price),
        fee=Decimal(0),
        order_qty=order,
        order_filled_qty=Decimal(filled) if filled is not None else order,
        reduce_only=leg > 0,
        ts=datetime.now(UTC),
        position_after=Decimal(position_after) if position_after is not None else None,
    )


def intents(output: object) -> list[OrderIntent]:
    assert isinstance(output, Sequence), output
    found = [item for item in output if isinstance(item, OrderIntent)]
    assert len(found) == len(output), output
    return found


# the entry ---------------------------------------------------------------------------------


def test_the_entry_is_leg_0_risk_sized_with_the_stop_and_no_target_on_it() -> None:
    [entry] = intents(ladder().on_signal(signal(), MARKET))

    # 1% of 10000 USDT over 2000 USDT per BTC between last price and stop = 0.05 BTC
    assert (entry.leg, entry.side, entry.qty) == (0, Side.BUY, Decimal("0.050"))
    assert entry.order_type is OrderType.MARKET
    assert (entry.stop_loss, entry.take_profit, entry.reduce_only) == (Decimal(95000), None, False)


def test_an_entry_price_makes_a_limit_entry_sized_from_it() -> None:
    [entry] = intents(ladder().on_signal(signal(entry=96000.04), MARKET))

    assert entry.order_type is OrderType.LIMIT
    assert entry.price == Decimal("96000.0")  # on the 0.1 tick
    # Sized from the price sent, not the signal's: 100 USDT over 1000 USDT per BTC
    assert entry.qty == Decimal("0.100")


def test_the_entry_is_capped_by_max_notional_and_its_leverage_hint_by_max_leverage() -> None:
    strategy = ladder(max_notional_usdt=1000, max_leverage=3)

    [entry] = intents(strategy.on_signal(signal(leverage=20), MARKET))

    assert entry.qty == Decimal("0.010")  # 1000 / 97000 = 0.0103 → 0.010
    assert entry.leverage == Decimal(3)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"side": None, "action": "close"}, "closes through its targets and stop"),
        ({"stop_loss": None}, "no stop_loss"),
        ({"take_profit": None}, "no take_profit target on the profitable side"),
        ({"take_profit": [96000, 90000]}, "no take_profit target on the profitable side"),
        ({"side": "sell", "take_profit": [99000]}, "no take_profit target"),
        ({"stop_loss": 98000, "take_profit": [99000]}, "wrong side"),
        ({"stop_loss": 1}, "below the minimum order qty"),
    ],
)
def test_declines_say_why(fields: dict[str, object], reason: str) -> None:
    out = ladder(risk_fraction="0.0001").on_signal(signal(**fields), MARKET)

    assert isinstance(out, Decline)
    assert reason in out.reason
    assert out.strategy == "ladder"


def test_an_entry_under_one_tick_is_declined_not_a_crash() -> None:
    # Rounded down to the 0.1 tick, a buy's entry of 0.01 is a price of 0: no order carries it.
    out = ladder().on_signal(signal(entry=0.01, stop_loss=0.001, take_profit=[1]), MARKET)

    assert isinstance(out, Decline)
    assert "rounds to no price on the tick 0.1" in out.reason


def test_a_shorts_target_under_one_tick_rounds_up_to_one_tick_never_to_a_price_of_0() -> None:
    short = signal(side="sell", stop_loss=99000, take_profit=[96000, 0.01])

    out = ladder().on_fill(fill(0, "0.010", side=Side.SELL), short, holding("-0.010"))

    assert [(leg.price, leg.qty) for leg in intents(out)] == [
        (Decimal(96000), Decimal("0.005")),
        (Decimal("0.1"), Decimal("0.005")),
    ]


def test_weights_must_be_positive_and_the_error_names_them() -> None:
    with pytest.raises(ValueError, match="weights") as raised:
        TakeProfitLadder.Params.model_validate({"weights": [1, 0]})

    assert raised.value.errors()[0]["loc"][0] == "weights"  # type: ignore[attr-defined]


# the split ---------------------------------------------------------------------------------

STEPS = [Decimal("0.001"), Decimal("0.01"), Decimal("0.1"), Decimal(1)]


def instrument(step: Decimal, min_steps: int) -> Instrument:
    return Instrument(
        symbol="BTCUSDT",
        qty_step=step,
        min_order_qty=step * min_steps,
        max_order_qty=Decimal(10**6),
        tick_size=Decimal("0.1"),
    )


@settings(max_examples=300, deadline=None)
@given(
    step=st.sampled_from(STEPS),
    min_steps=st.integers(1, 20),
    extra_steps=st.integers(0, 5000),
    weights=st.lists(
        st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100), places=2),
        min_size=1,
        max_size=10,
    ),
)
def test_split_shares_sum_to_the_total_each_tradable_one_per_weight(
    step: Decimal, min_steps: int, extra_steps: int, weights: list[Decimal]
) -> None:
    rules = instrument(step, min_steps)
    total = rules.min_order_qty + step * extra_steps  # a filled entry: at least the minimum

    shares = split(total, weights, context(instrument=rules))

    assert sum(shares) == total
    assert len(shares) == len(weights)
    assert all(share >= 0 for share in shares)
    for share in (share for share in shares if share > 0):
        assert share >= rules.min_order_qty
        assert share % step == 0


def test_split_follows_the_weights_and_gives_the_rounding_to_the_last_share() -> None:
    assert split(Decimal("0.010"), [Decimal(1), Decimal(3)], MARKET) == [
        Decimal("0.002"),
        Decimal("0.008"),
    ]
    assert split(Decimal("0.010"), [Decimal(1)] * 3, MARKET) == [
        Decimal("0.003"),
        Decimal("0.003"),
        Decimal("0.004"),
    ]


def test_a_share_below_the_minimum_joins_the_next_one() -> None:
    rules = instrument(Decimal("0.001"), 10)  # lot 0.001, minimum 0.01

    shares = split(Decimal("0.015"), [Decimal(1)] * 2, context(instrument=rules))

    assert shares == [Decimal(0), Decimal("0.015")]  # 0.007 alone could not be placed


def test_shares_under_one_lot_are_carried_forward_not_all_left_to_the_farthest_target() -> None:
    # A quarter of 0.003 is under the 0.001 lot: the first share is carried to the next.
    shares = split(Decimal("0.003"), [Decimal(1)] * 4, MARKET)

    assert shares == [Decimal(0), Decimal("0.001"), Decimal("0.001"), Decimal("0.001")]


# the legs ----------------------------------------------------------------------------------


def test_the_full_fill_of_the_entry_places_reduce_only_legs_at_the_targets_nearest_first() -> None:
    targets = [99000, 90000, 98000.06]  # rounded toward the entry: 98000.0, never out of reach
    out = ladder().on_fill(fill(0, "0.010"), signal(take_profit=targets), holding("0.010"))

    legs = intents(out)
    assert [(leg.leg, leg.price, leg.qty) for leg in legs] == [
        (1, Decimal("98000.0"), Decimal("0.005")),
        (2, Decimal(99000), Decimal("0.005")),
    ]
    assert all(leg.side is Side.SELL and leg.reduce_only for leg in legs)
    assert all(leg.order_type is OrderType.LIMIT and leg.stop_loss is None for leg in legs)
    assert {(leg.strategy, leg.signal_id) for leg in legs} == {("ladder", "s1")}


def test_a_short_ladders_down_with_buy_legs_split_by_weight() -> None:
    short = signal(side="sell", stop_loss=99000, take_profit=[96000, 95000, 94000])

    legs = intents(
        ladder(weights=[1, 1, 2]).on_fill(
            fill(0, "0.040", side=Side.SELL), short, holding("-0.040")
        )
    )

    assert [(leg.leg, leg.side, leg.price, leg.qty) for leg in legs] == [
        (1, Side.BUY, Decimal(96000), Decimal("0.010")),
        (2, Side.BUY, Decimal(95000), Decimal("0.010")),
        (3, Side.BUY, Decimal(94000), Decimal("0.020")),
    ]


def test_targets_are_judged_against_the_entry_fill_not_where_the_price_ran_since() -> None:
    # A market entry filled at 97000; by the time its fill is reported the price is 98500.
    # The 98000 target is still a profit on the position: it keeps its leg.
    ran = context(last_price=98500, position_qty="0.010", entry_price=97000)

    legs = intents(ladder().on_fill(fill(0, "0.010", price=97000), signal(), ran))

    assert [leg.price for leg in legs] == [Decimal(98000), Decimal(99000)]


@pytest.mark.parametrize("held", ["0", "-0.010"], ids=["flat", "the other side"])
def test_no_legs_when_the_position_is_gone_by_the_time_the_entry_is_heard_of(held: str) -> None:
    # The stop fired first (or someone closed, or turned, the position): reduce-only legs
    # for it would wait for, and cut into, a later position.
    assert ladder().on_fill(fill(0, "0.010"), signal(), holding(held)) is None


def test_legs_cover_no_more_than_the_position_still_held() -> None:
    legs = intents(ladder().on_fill(fill(0, "0.010"), signal(), holding("0.004")))

    assert sum(leg.qty for leg in legs) == Decimal("0.004")


def test_a_partial_fill_of_the_entry_waits_for_the_rest() -> None:
    partial = fill(0, "0.004", order_qty="0.010", filled="0.004")

    assert ladder().on_fill(partial, signal(), MARKET) is None


@settings(max_examples=150, deadline=None)
@given(
    targets=st.lists(st.integers(97001, 200000), min_size=1, max_size=14, unique=True),
    lots=st.integers(1, 100000),
)
def test_never_more_legs_than_targets_and_every_leg_distinct(targets: list[int], lots: int) -> None:
    filled = Decimal("0.001") * lots

    out = ladder().on_fill(fill(0, str(filled)), signal(take_profit=targets), holding(filled))
    legs = intents(out)

    assert 1 <= len(legs) <= min(len(targets), 10)
    assert len({leg.leg for leg in legs}) == len(legs)
    assert len({leg.price for leg in legs}) == len(legs)
    assert sum(leg.qty for leg in legs) == filled


def earlier_target(qty: str, filled: str = "0") -> OpenOrder:
    """A target of an earlier ladder (signal s0) selling `qty` of the long, `filled` of it."""
    return open_order(
        "ladder-1-earlier", Side.SELL, qty, leg=1, price=98500, reduce_only=True, filled=filled
    )


def test_targets_of_earlier_ladders_still_resting_leave_only_the_rest_of_the_position() -> None:
    # An earlier ladder's targets cover 0.004 of a 0.010 long: this one's legs may cover 0.006.
    earlier = earlier_target("0.005", filled="0.001")
    both = context(position_qty="0.010", entry_price=97000, open_orders=(earlier,))

    legs = intents(ladder().on_fill(fill(0, "0.010"), signal(), both))

    assert sum(leg.qty for leg in legs) == Decimal("0.006")


def test_an_entry_that_only_closed_an_earlier_position_lays_no_legs_on_a_later_one() -> None:
    # Its sell closed a long (0 once booked); by the time its hook runs, a later signal has
    # opened a short: that short's own hook lays its targets, not this one.
    later_short = holding("-0.005")

    out = ladder().on_fill(
        fill(0, "0.005", side=Side.SELL, position_after="0"), signal(side="sell"), later_short
    )

    assert out is None


def test_an_entry_that_turned_a_position_lays_legs_for_what_it_opened() -> None:
    # A 0.010 sell turned a 0.004 long into a 0.006 short: legs for 0.006.
    short = holding("-0.006")
    targets = {"take_profit": [96000, 95000]}

    out = ladder().on_fill(
        fill(0, "0.010", side=Side.SELL, position_after="-0.006"),
        signal(side="sell", stop_loss=98000, **targets),
        short,
    )

    assert sum(leg.qty for leg in intents(out)) == Decimal("0.006")


def test_a_fill_of_an_order_of_a_close_signal_is_not_an_entry() -> None:
    # An operator's flatten journals its close under the strategy, from a signal with no side.
    close = parse_signal(
        "admin",
        {"id": "flatten-1", "symbol": "BTCUSDT", "action": "close", "ts": "2026-11-30T00:00:00Z"},
    )

    assert ladder().on_fill(fill(0, "0.005", side=Side.SELL), close, holding("-0.002")) is None


def test_no_legs_when_earlier_targets_already_cover_the_position() -> None:
    earlier = earlier_target("0.010")
    covered = context(position_qty="0.010", entry_price=97000, open_orders=(earlier,))

    assert ladder().on_fill(fill(0, "0.010"), signal(), covered) is None


# break-even --------------------------------------------------------------------------------


def test_the_first_targets_fill_moves_the_stop_to_the_entry_price() -> None:
    holding = context(last_price=98000, position_qty="0.005", entry_price=97012)

    out = ladder().on_fill(fill(1, "0.005", side=Side.SELL, price=98000), signal(), holding)

    assert out == [
        StopMove(
            strategy="ladder",
            signal_source="voiceofchain",
            signal_id="s1",
            symbol="BTCUSDT",
            stop_loss=Decimal(97012),
            close_leg_if_crossed=11,  # a close at market if the price is back past it
        )
    ]


@pytest.mark.parametrize(
    ("leg_fill", "strategy"),
    [
        (fill(1, "0.002", order_qty="0.005", filled="0.002", side=Side.SELL), ladder()),
        (fill(2, "0.005", side=Side.SELL), ladder()),
        (fill(1, "0.005", side=Side.SELL), ladder(break_even_after_first=False)),
    ],
    ids=["first-target-partly-filled", "second-target", "break-even-off"],
)
def test_no_stop_move_otherwise(leg_fill: Fill, strategy: TakeProfitLadder) -> None:
    holding = context(last_price=98000, position_qty="0.005", entry_price=97000)

    assert strategy.on_fill(leg_fill, signal(), holding) is None


@pytest.mark.parametrize("held", ["0", "-0.050"], ids=["flat", "turned-by-a-flip"])
def test_no_stop_move_when_the_ladders_position_is_gone_by_the_time_its_first_target_fills(
    held: str,
) -> None:
    # A flip's short has its own stop: the long's break-even must not replace it.
    later = context(last_price=98000, position_qty=held, entry_price=98000)

    assert ladder().on_fill(fill(1, "0.005", side=Side.SELL), signal(), later) is None


# an opposite signal: the flip ----------------------------------------------------------------

SHORT = {"side": "sell", "stop_loss": 99000, "take_profit": [96000, 95000]}


def test_an_opposite_signal_flips_the_position_in_one_entry_its_targets_left_to_go() -> None:
    # The long's own targets rest: the bot cancels them when the flip turns the position.
    long_with_targets = context(
        position_qty="0.010", entry_price=97000, open_orders=(earlier_target("0.010"),)
    )

    [entry] = intents(ladder().on_signal(signal(**SHORT), long_with_targets))

    # 0.010 closes the long, 0.050 opens the short (100 USDT over 2000 USDT per BTC).
    assert (entry.leg, entry.side, entry.qty) == (0, Side.SELL, Decimal("0.060"))
    assert (entry.order_type, entry.reduce_only) == (OrderType.MARKET, False)
    assert (entry.stop_loss, entry.take_profit) == (Decimal(99000), None)


def test_the_flips_fill_lays_legs_for_the_new_position_only() -> None:
    out = ladder().on_fill(
        fill(0, "0.060", side=Side.SELL, position_after="-0.050"),
        signal(**SHORT),
        holding("-0.050"),
    )

    legs = intents(out)
    assert sum(leg.qty for leg in legs) == Decimal("0.050")
    assert {(leg.side, leg.reduce_only) for leg in legs} == {(Side.BUY, True)}


def unfinished_entry() -> OpenOrder:
    """An entry of the strategy's (a limit buy) not filled yet."""
    return open_order("ladder-0-pending", Side.BUY, "0.005", price=96000)


@pytest.mark.parametrize(
    ("fields", "open_orders", "reason"),
    [
        ({"entry": 97500}, (), "a limit entry cannot flip the 0.01 BTCUSDT position"),
        (
            {},
            (earlier_target("0.005"), unfinished_entry()),
            "cannot be flipped while 1 of the strategy's orders in it are unfinished",
        ),
    ],
)
def test_a_flip_is_declined_when_it_could_open_more_than_the_signal_asks(
    fields: dict[str, object], open_orders: tuple[OpenOrder, ...], reason: str
) -> None:
    long = context(position_qty="0.010", entry_price=97000, open_orders=open_orders)

    out = ladder().on_signal(signal(**SHORT | fields), long)

    assert isinstance(out, Decline)
    assert reason in out.reason, out.reason
