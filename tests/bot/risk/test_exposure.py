"""The exposure ledger follows each order in flight as the venue reports it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from bot.journal import Journal
from bot.messages import Execution, OrderEvent, OrderStatus, OrderType
from bot.risk.exposure import ExposureLedger, Reservation, reserve_unfinished
from tests.factories import make_execution, make_request

LINK = "follow-0-x"


@pytest.fixture
def warnings() -> list[str]:
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message} {extra[notify]}")
    yield lines
    logger.remove(handler)


def _report(status: OrderStatus, venue_qty: str | None, filled: str = "0") -> OrderEvent:
    return OrderEvent(
        order_link_id=LINK,
        status=status,
        venue_qty=None if venue_qty is None else Decimal(venue_qty),
        filled_qty=Decimal(filled),
    )


def _fill(qty: str) -> Execution:
    return make_execution(order_link_id=LINK, qty=Decimal(qty))


def test_an_order_amended_at_the_venue_counts_at_its_venue_quantity(
    warnings: list[str],
) -> None:
    ledger = ExposureLedger(lambda strategy, symbol: Decimal(0))
    ledger.reserve(LINK, Reservation("follow", "BTCUSDT", Decimal("0.005")))

    ledger.follow(_report(OrderStatus.NEW, "0.005"))  # as approved: nothing to say
    assert warnings == []
    ledger.follow(_report(OrderStatus.NEW, "0.1"))  # another client amended it
    ledger.follow(_report(OrderStatus.PARTIALLY_FILLED, "0.1", filled="0.02"))

    assert ledger.worst_position("follow", "BTCUSDT") == Decimal("0.1")
    assert len(warnings) == 1
    assert "holds 0.1 BTCUSDT, not the 0.005 the risk gate counted" in warnings[0]
    assert warnings[0].rstrip().endswith("foreign")
    ledger.follow(_report(OrderStatus.FILLED, "0.1", filled="0.1"))
    # Terminal, not an open order; its fill counts until the books hold it.
    assert (ledger.worst_position("follow", "BTCUSDT"), ledger.open_orders("follow")) == (
        Decimal("0.1"),
        0,
    )
    ledger.fill_booked(_fill("0.1"))
    assert ledger.worst_position("follow", "BTCUSDT") == 0


def test_a_reduce_only_order_the_venue_trims_is_no_news(warnings: list[str]) -> None:
    ledger = ExposureLedger(lambda strategy, symbol: Decimal("0.003"))
    ledger.reserve(LINK, Reservation("follow", "BTCUSDT", Decimal("-0.005"), reduce_only=True))

    ledger.follow(_report(OrderStatus.NEW, "0.003"))

    assert warnings == []
    assert ledger.open_orders("follow") == 1


def test_an_amendment_is_no_news_again_after_a_restart(tmp_path: Path, warnings: list[str]) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.record_order(make_request(order_link_id=LINK, qty=Decimal("0.005")))
    journal.record_order_event(_report(OrderStatus.NEW, "0.1"))  # amended before the restart
    ledger = ExposureLedger(lambda strategy, symbol: Decimal(0))

    reserve_unfinished(ledger, journal.unfinished_orders(), {})
    ledger.follow(_report(OrderStatus.NEW, "0.1"))  # the stream's first report since

    assert warnings == []
    assert ledger.worst_position("follow", "BTCUSDT") == Decimal("0.1")
    journal.close()


def test_a_fill_reported_before_it_is_booked_counts_until_it_is() -> None:
    # Reproduced: Bybit pushes an order Filled before its execution; the reservation was
    # dropped at Filled, and for that moment the fill counted nowhere (7 approvals past a
    # 3,000 USDT total in a burst).
    book = {"size": Decimal(0)}
    ledger = ExposureLedger(lambda strategy, symbol: book["size"])
    ledger.reserve(LINK, Reservation("follow", "BTCUSDT", Decimal("0.01")))

    ledger.follow(_report(OrderStatus.PARTIALLY_FILLED, "0.01", filled="0.004"))
    book["size"] = Decimal("0.004")
    ledger.fill_booked(_fill("0.004"))
    assert ledger.worst_position("follow", "BTCUSDT") == Decimal("0.01")
    ledger.follow(_report(OrderStatus.CANCELLED, "0.01", filled="0.006"))  # 0.002 unbooked

    assert ledger.worst_position("follow", "BTCUSDT") == Decimal("0.006")
    assert ledger.open_orders("follow") == 0
    book["size"] = Decimal("0.006")
    ledger.fill_booked(_fill("0.002"))
    assert ledger.worst_position("follow", "BTCUSDT") == Decimal("0.006")  # the book's alone
    assert ledger.exposure_symbols("follow") == set()  # nothing left in flight


def test_after_a_restart_an_order_counts_less_what_the_books_hold_of_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.record_order(make_request(order_link_id=LINK, qty=Decimal("0.01")))
    journal.record_order_event(_report(OrderStatus.PARTIALLY_FILLED, "0.01", filled="0.006"))
    ledger = ExposureLedger(lambda strategy, symbol: Decimal("0.004"))  # one fill booked

    reserve_unfinished(ledger, journal.unfinished_orders(), {LINK: Decimal("0.004")})
    ledger.follow(_report(OrderStatus.FILLED, "0.01", filled="0.01"))

    assert ledger.worst_position("follow", "BTCUSDT") == Decimal("0.01")
    ledger.fill_booked(_fill("0.006"))
    assert ledger.worst_position("follow", "BTCUSDT") == Decimal("0.004")  # as the stub's book
    journal.close()


def test_a_sell_limit_in_flight_is_valued_at_its_limit_until_it_is_done() -> None:
    ledger = ExposureLedger(lambda strategy, symbol: Decimal("0.01"))  # a long of 0.01
    market = Decimal(50000)
    ledger.reserve(LINK, Reservation("follow", "BTCUSDT", Decimal("-0.03"), limit=Decimal(54000)))

    # If the sell fills, the market was at 54,000 at least; the long may have closed first
    # (its stop): a short of 0.03 worth 1,620.
    assert ledger.worst_notional("follow", "BTCUSDT", market) == Decimal(1620)
    adding = Reservation("follow", "BTCUSDT", Decimal("-0.01"), limit=Decimal(55000))
    assert ledger.strategy_exposure("follow", {"BTCUSDT": market}, adding) == Decimal(2200)
    buying = Reservation("follow", "BTCUSDT", Decimal("0.05"))  # the long's side, at market
    assert ledger.worst_notional("follow", "BTCUSDT", market, buying) == Decimal(3000)

    ledger.follow(_report(OrderStatus.CANCELLED, "0.03"))  # nothing filled

    assert ledger.worst_notional("follow", "BTCUSDT", market) == Decimal(500)  # the long's


def test_a_limit_the_venue_moved_is_valued_at_the_venues_price(warnings: list[str]) -> None:
    ledger = ExposureLedger(lambda strategy, symbol: Decimal(0))
    ledger.reserve(LINK, Reservation("follow", "BTCUSDT", Decimal("-0.01"), limit=Decimal(51000)))
    moved = _report(OrderStatus.NEW, "0.02").model_copy(update={"venue_price": Decimal(60000)})

    ledger.follow(moved)  # another client amended its quantity and its price
    ledger.follow(moved)  # the same again: no news

    assert ledger.worst_notional("follow", "BTCUSDT", Decimal(50000)) == Decimal(1200)
    assert len(warnings) == 1  # of the quantity; the executor says what another client did
    assert "holds 0.02 BTCUSDT, not the 0.01 the risk gate counted" in warnings[0]


def test_after_a_restart_a_limit_order_is_valued_at_the_venues_limit(
    tmp_path: Path, warnings: list[str]
) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.record_order(
        make_request(order_link_id=LINK, side="Sell", order_type="Limit", price=Decimal(52000))
    )
    ledger = ExposureLedger(lambda strategy, symbol: Decimal(0))
    reserve_unfinished(ledger, journal.unfinished_orders(), {})
    assert ledger.worst_notional("follow", "BTCUSDT", Decimal(50000)) == Decimal(520)
    amended = OrderEvent(
        order_link_id=LINK,
        status=OrderStatus.NEW,
        order_type=OrderType.LIMIT,
        venue_price=Decimal(54000),  # another client moved it before the restart
    )
    journal.record_order_event(amended)
    ledger = ExposureLedger(lambda strategy, symbol: Decimal(0))

    reserve_unfinished(ledger, journal.unfinished_orders(), {})
    ledger.follow(amended)  # the stream's first report since: no news

    assert ledger.worst_notional("follow", "BTCUSDT", Decimal(50000)) == Decimal(540)
    assert warnings == []
    journal.close()


_STRATEGIES = ("a", "b", "c")
_SYMBOLS = ("BTCUSDT", "ETHUSDT")


@st.composite
def _reservation(draw: st.DrawFn) -> Reservation:
    qty = Decimal(draw(st.integers(1, 50))) / 1000
    return Reservation(
        draw(st.sampled_from(_STRATEGIES)),
        draw(st.sampled_from(_SYMBOLS)),
        qty if draw(st.booleans()) else -qty,
        reduce_only=draw(st.booleans()),
        limit=draw(st.sampled_from([None, Decimal(90), Decimal(110)])),
    )


@given(
    st.lists(
        st.tuples(st.sampled_from(["reserve", "release"]), st.integers(0, 5), _reservation()),
        max_size=40,
    )
)
def test_each_strategy_s_exposure_is_its_own_orders_in_flight_whatever_came_before(
    steps: list[tuple[str, int, Reservation]],
) -> None:
    """The sums the ledger keeps per strategy and symbol (so that a decision scans none of the
    other strategies) are always those of the orders in flight it holds: an order released
    leaves nothing behind, in its own strategy's symbols or in another's. A symbol without a
    price is left out of the sum and named."""
    ledger = ExposureLedger(lambda strategy, symbol: Decimal(0))
    held: dict[str, Reservation] = {}
    for action, number, reservation in steps:
        link = f"o{number}"
        if action == "reserve":
            ledger.reserve(link, reservation)
            held[link] = reservation
        else:
            ledger.release(link)
            held.pop(link, None)
    prices = dict.fromkeys(_SYMBOLS, Decimal(100))
    for strategy in _STRATEGIES:
        mine = [r for r in held.values() if r.strategy == strategy and not r.reduce_only]
        assert ledger.exposure_symbols(strategy) == {r.symbol for r in mine}
        expected: dict[str, Decimal] = {}
        for symbol in _SYMBOLS:
            sides = [r for r in mine if r.symbol == symbol]
            buys = [r for r in sides if r.signed_qty > 0]
            sells = [r for r in sides if r.signed_qty < 0]
            long = sum((r.qty for r in buys), Decimal(0))
            short = sum((r.qty for r in sells), Decimal(0))
            buy_price = max([Decimal(100), *(r.limit for r in buys if r.limit)])
            sell_price = max([Decimal(100), *(r.limit for r in sells if r.limit)])
            expected[symbol] = max(long * buy_price, short * sell_price)
        assert ledger.strategy_exposure(strategy, prices) == sum(expected.values(), Decimal(0))
        # Without ETHUSDT's price: the rest is valued, and ETHUSDT named if exposure is there.
        exposure = ledger.exposure_at(strategy, {"BTCUSDT": Decimal(100)})
        assert exposure.notional == expected["BTCUSDT"]
        assert exposure.unpriced == (["ETHUSDT"] if expected["ETHUSDT"] else [])
        assert ledger.open_orders(strategy) == sum(r.strategy == strategy for r in held.values())
