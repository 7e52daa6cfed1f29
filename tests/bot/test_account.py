"""The account projection: each strategy's own book from its fills, once per execId, and
convergence to the venue whatever order and duplicates the reports come in."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from bot.account import (
    UNATTRIBUTED,
    Account,
    AccountKeeper,
    AccountProjection,
    AccountReport,
    RecentFills,
    StrandedBy,
)
from bot.journal import Journal
from bot.messages import (
    ClosedPnl,
    Execution,
    OrderEvent,
    OrderStatus,
    OrderType,
    PositionUpdate,
    Side,
    WalletUpdate,
)
from bot.venue.errors import RetryableError
from bot.venue.fake import FakeVenue
from tests.factories import make_request, sim_position, stop_loss

T0 = datetime(2026, 11, 28, 12, tzinfo=UTC)
_ids = itertools.count()


def fill(
    side: Side,
    qty: str,
    price: str,
    *,
    link: str = "",
    fee: str = "0",
    stop: str = "",
    key: str = "k",
    exec_id: str | None = None,
    at: datetime = T0,
) -> Execution:
    return Execution(
        exec_id=exec_id or f"e{next(_ids)}",
        key_name=key,
        order_id=f"o-{link or 'venue'}",
        order_link_id=link,
        symbol="BTCUSDT",
        side=side,
        qty=Decimal(qty),
        price=Decimal(price),
        fee=Decimal(fee),
        stop_order_type=stop,
        ts=at,
    )


def placed(journal: Journal, link: str, strategy: str = "alpha", side: Side = Side.BUY) -> None:
    """Journal our order `link` and the venue's answer to its send (`acknowledged`)."""
    journal.record_order(make_request(order_link_id=link, strategy=strategy, side=side))
    acknowledged(journal, link)


def acknowledged(journal: Journal, link: str) -> None:
    """Journal the venue's answer to the send of our order `link`: the orderId the fills of
    `fill(link=link)` carry. (Before it, a fill under that orderLinkId is held until the
    answer tells whose order it is.)"""
    journal.record_order_event(
        OrderEvent(order_link_id=link, status=OrderStatus.NEW, order_id=f"o-{link}")
    )


def market_filled(
    order_id: str, qty: str, price: int, *, symbol: str = "BTCUSDT", side: Side = Side.BUY
) -> OrderEvent:
    """The venue's report of a market order filled whole under orderLinkId alpha-0-x."""
    return OrderEvent(
        order_link_id="alpha-0-x",
        status=OrderStatus.FILLED,
        order_id=order_id,
        filled_qty=Decimal(qty),
        avg_price=Decimal(price),
        venue_qty=Decimal(qty),
        symbol=symbol,
        side=side,
        order_type=OrderType.MARKET,
    )


async def until(done: Callable[[], object]) -> None:
    """Give the keeper's release of held reports (a task of its own, which may ask the
    journal) up to 5 s to make `done()` true."""
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)


def apply(projection: AccountProjection, item: Execution, strategy: str | None) -> None:
    projection.apply_execution(item, projection.allocate(item, strategy))


def apply_logged(
    keeper: AccountKeeper, journal: Journal, *reports: AccountReport
) -> list[tuple[str, str]]:
    """Hand `reports` to the keeper in turn, its journal writes done; what it logged, as
    (level, message)."""
    said: list[tuple[str, str]] = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"])))

    async def deliver() -> None:
        for report in reports:
            await keeper.apply(report)

    try:
        asyncio.run(deliver())
        journal.flush()
    finally:
        logger.remove(sink)
    return said


def test_a_strategy_book_is_average_cost_with_realized_pnl_and_fees() -> None:
    projection = AccountProjection()

    apply(projection, fill(Side.BUY, "0.01", "100", fee="0.1"), "alpha")
    apply(projection, fill(Side.BUY, "0.01", "110", fee="0.1"), "alpha")
    apply(projection, fill(Side.SELL, "0.015", "120", fee="0.2"), "alpha")

    (book,) = projection.books()
    assert (book.size, book.entry_price) == (Decimal("0.005"), Decimal(105))
    assert book.realized_pnl == Decimal("0.225")
    assert book.fees == Decimal("0.4")
    assert book.today(T0) == (Decimal("0.225"), Decimal("0.4"))
    assert book.today(T0 + timedelta(days=1)) == (0, 0)  # a new UTC day starts at zero


def test_strategies_on_a_shared_key_keep_separate_books_and_a_stop_closes_both() -> None:
    projection = AccountProjection()
    apply(projection, fill(Side.BUY, "0.01", "100"), "alpha")
    apply(projection, fill(Side.BUY, "0.03", "100"), "beta")

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")
    assert projection.strategy_size("k", "beta", "BTCUSDT") == Decimal("0.03")

    stop = fill(Side.SELL, "0.04", "95", stop="StopLoss")  # the position's stop: no orderLinkId
    apply(projection, stop, None)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", "beta", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == 0


def test_a_fill_of_an_order_no_strategy_placed_is_unattributed() -> None:
    projection = AccountProjection()

    apply(projection, fill(Side.BUY, "0.01", "100"), None)

    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == Decimal("0.01")


def test_another_clients_close_of_our_position_closes_our_book() -> None:
    # Someone closes the key's position by hand on Bybit: the venue holds nothing, and
    # the strategy's book must not go on claiming it (its own close would be refused).
    projection = AccountProjection()
    apply(projection, fill(Side.BUY, "0.14", "100"), "alpha")

    apply(projection, fill(Side.SELL, "0.14", "90", fee="0.05"), None)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == 0
    (book,) = projection.books()
    assert (book.realized_pnl, book.fees) == (Decimal("-1.40"), Decimal("0.05"))


def test_another_clients_trades_and_ours_net_as_the_venues_one_position_does() -> None:
    projection = AccountProjection()
    apply(projection, fill(Side.BUY, "0.14", "100"), "alpha")

    apply(projection, fill(Side.BUY, "0.1", "101"), None)  # its own long, beside ours
    apply(projection, fill(Side.SELL, "0.3", "99"), None)  # closes its own, then ours, then
    # goes short 0.06 of its own

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == Decimal("-0.06")

    # alpha buys 0.14: 0.06 of it closes the other's short (the key's position is net)
    apply(projection, fill(Side.BUY, "0.14", "100"), "alpha")
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.08")
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == 0
    apply(projection, fill(Side.BUY, "0.06", "105", fee="0.3"), None)  # a long of its own now

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.08")
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == Decimal("0.06")
    # The bot's loss today is its strategies': alpha lost 0.14 at 99, not the other's 0.6
    assert projection.pnl_today(None, T0) == projection.pnl_today("alpha", T0) == Decimal("-0.14")


@pytest.mark.parametrize("closer", [None, "alpha"], ids=["another client", "the strategy"])
def test_a_fill_that_leaves_the_position_flat_leaves_no_book_claiming_it(
    closer: str | None,
) -> None:
    # Another client's long, then the strategy's bigger short: the venue is short 0.09.
    projection = AccountProjection()
    apply(projection, fill(Side.BUY, "0.05", "100"), None)
    apply(projection, fill(Side.SELL, "0.14", "100"), "alpha")
    # 0.05 of the strategy's sell closed the other's long: never two opposite books
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("-0.09")
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == 0

    # Someone closes what the venue holds (another client by hand, or the strategy's
    # reduce-only close, which the venue trims to 0.09).
    apply(projection, fill(Side.BUY, "0.09", "90", fee="0.09"), closer)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == 0
    assert sum(book.fees for book in projection.books()) == Decimal("0.09")


def test_a_stop_that_flattens_opposed_strategies_closes_both_books_with_one_fee() -> None:
    # Reproduced: alpha long 0.005 and beta short 0.003 net to the key's 0.002; the stop's
    # sell of 0.002 left alpha 0.003 and beta -0.003 on a flat key, their closes refused.
    projection = AccountProjection()
    apply(projection, fill(Side.BUY, "0.005", "100"), "alpha")
    apply(projection, fill(Side.SELL, "0.003", "100"), "beta")

    apply(projection, fill(Side.SELL, "0.002", "90", fee="0.8", stop="StopLoss"), None)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", "beta", "BTCUSDT") == 0
    alpha, beta = projection.books()
    assert (alpha.realized_pnl, beta.realized_pnl) == (Decimal("-0.050"), Decimal("0.030"))
    assert alpha.fees + beta.fees == Decimal("0.8")


def test_another_clients_partial_stop_closes_its_own_part_first() -> None:
    # The bot sets only whole-position exits; a partial one is another client's, for its part.
    projection = AccountProjection()
    apply(projection, fill(Side.BUY, "0.01", "100"), "alpha")
    apply(projection, fill(Side.BUY, "0.01", "100"), None)

    apply(projection, fill(Side.SELL, "0.01", "95", stop="PartialStopLoss"), None)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == 0


def test_a_split_that_does_not_come_out_even_never_grows_a_book() -> None:
    # Rounding each part to 1e-12 left the last holder by name a remainder bigger than its
    # own dust, on the wrong side: another client's sell grew a long book.
    projection = AccountProjection()
    sizes = {"s0": "3e-12", "s1": "3e-12", "s2": "0.005", "s3": "1e-12"}
    for name, size in sizes.items():
        apply(projection, fill(Side.BUY, size, "100"), name)

    apply(projection, fill(Side.SELL, "0.001", "100"), None)

    after = {name: projection.strategy_size("k", name, "BTCUSDT") for name in sizes}
    assert all(0 <= after[name] <= Decimal(size) for name, size in sizes.items())
    assert sum(after.values()) == Decimal("0.004000000007")


OURS = ("alpha", "beta", "gamma")
#: Lots, and dust: sizes whose proportional split does not come out even (thirds...).
QTYS = st.integers(min_value=1, max_value=40).map(lambda n: Decimal(n) / 1000) | st.integers(
    min_value=1, max_value=7
).map(lambda n: n * Decimal("1e-12"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([*OURS, "foreign", "stop"]), st.sampled_from(Side), QTYS),
        max_size=30,
    )
)
def test_the_books_always_add_up_to_the_venues_position_and_others_only_reduce_ours(
    fills: list[tuple[str, Side, Decimal]],
) -> None:
    projection = AccountProjection()
    venue = Decimal(0)
    for who, side, qty in fills:
        item = fill(side, str(qty), "100", stop="StopLoss" if who == "stop" else "")
        before = {name: projection.strategy_size("k", name, "BTCUSDT") for name in OURS}

        apply(projection, item, who if who in OURS else None)

        venue += item.signed_qty
        assert sum((book.size for book in projection.books()), Decimal(0)) == venue
        if venue == 0:  # a flat key: no book goes on claiming a position there
            assert all(book.size == 0 for book in projection.books())
        if who in ("foreign", "stop"):  # another's fill only ever takes from what we hold
            for name, size in before.items():
                after = projection.strategy_size("k", name, "BTCUSDT")
                assert abs(after) <= abs(size) and after * size >= 0


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.record_order(make_request(order_link_id="alpha-0-x", strategy="alpha"))
    yield journal
    journal.close()


def test_a_liquidation_closes_the_strategies_books_and_is_said_as_a_warning(
    journal: Journal,
) -> None:
    acknowledged(journal, "alpha-0-x")
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    ours = fill(Side.BUY, "0.01", "100", link="alpha-0-x")
    taken = fill(Side.SELL, "0.01", "90").model_copy(update={"exec_type": "BustTrade"})
    said = apply_logged(keeper, journal, ours, taken)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == 0
    fills = [(level, message) for level, message in said if message.startswith("fill on key")]
    assert fills[0][0] == "INFO" and fills[0][1].endswith("(alpha)")
    assert fills[1][0] == "WARNING" and fills[1][1].endswith("(BustTrade by the venue)")


def test_the_keeper_applies_a_fill_once_however_often_it_is_reported(journal: Journal) -> None:
    acknowledged(journal, "alpha-0-x")
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    item = fill(Side.BUY, "0.01", "100", link="alpha-0-x", exec_id="same")

    async def report_three_times() -> None:
        for _ in range(3):
            await keeper.apply(item)

    asyncio.run(report_three_times())
    journal.flush()

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")
    replayed = AccountProjection.replay(journal.executions())
    assert replayed.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")


@pytest.mark.parametrize(
    ("symbol", "side"), [("ETHUSDT", Side.BUY), ("BTCUSDT", Side.SELL)], ids=["symbol", "side"]
)
def test_another_clients_order_under_our_order_link_id_is_not_ours(
    journal: Journal, symbol: str, side: Side
) -> None:
    # Our buy of BTCUSDT is journaled; another client of the key places an order of its own
    # under the same orderLinkId, and the stream reports it and its fill.
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    theirs = market_filled("their-order", "0.01", 3000, symbol=symbol, side=side)
    their_fill = fill(side, "0.01", "3000", link="alpha-0-x").model_copy(update={"symbol": symbol})
    said = apply_logged(keeper, journal, theirs, their_fill)
    warning = logger.level("WARNING").no
    warnings = [message for level, message in said if logger.level(level).no >= warning]

    record = journal.order("alpha-0-x")
    assert record is not None
    assert (record.status, record.order_id) == (OrderStatus.PENDING, None)
    assert projection.strategy_size("k", "alpha", symbol) == 0
    signed = their_fill.signed_qty
    assert projection.strategy_size("k", UNATTRIBUTED, symbol) == signed
    assert len(list(journal.executions())) == 1  # the venue's fill is journaled, as not ours
    assert len(warnings) == 1 and "another client of the key" in warnings[0]


def test_a_fill_of_another_orderid_under_our_order_link_id_is_not_ours(journal: Journal) -> None:
    # Our order is acknowledged as orderId "our-order"; a fill of the same symbol and side
    # comes under its orderLinkId, of another orderId: another client's.
    journal.record_order_event(
        OrderEvent(order_link_id="alpha-0-x", status=OrderStatus.NEW, order_id="our-order")
    )
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    theirs = fill(Side.BUY, "0.01", "100", link="alpha-0-x").model_copy(
        update={"order_id": "their-order"}
    )

    asyncio.run(keeper.apply(theirs))
    journal.flush()

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == Decimal("0.01")
    assert projection.booked_qty("alpha-0-x") == 0  # no fill of our order


def test_a_fill_under_the_order_link_id_of_an_order_the_venue_never_took_is_not_ours(
    journal: Journal,
) -> None:
    # Our order was told of as journaled (its owner remembered), then rejected without ever
    # reaching the venue; another client's order under its orderLinkId fills.
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    keeper.expect_order(make_request(order_link_id="alpha-0-x", strategy="alpha"))
    journal.record_order_event(
        OrderEvent(order_link_id="alpha-0-x", status=OrderStatus.REJECTED, reason="not ours")
    )
    theirs = fill(Side.BUY, "0.01", "100", link="alpha-0-x").model_copy(
        update={"order_id": "their-order"}
    )

    said = apply_logged(keeper, journal, theirs)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == Decimal("0.01")
    assert any("never took from us" in message for level, message in said if level == "WARNING")


def test_a_late_fill_of_a_finished_order_of_ours_is_still_ours(journal: Journal) -> None:
    # The owner was remembered before the acknowledgement (no orderId); the order has since
    # filled and left the unfinished orders: the journal's committed orderId decides.
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    keeper.expect_order(make_request(order_link_id="alpha-0-x", strategy="alpha"))
    for status in (OrderStatus.NEW, OrderStatus.FILLED):
        journal.record_order_event(
            OrderEvent(
                order_link_id="alpha-0-x",
                status=status,
                order_id="our-order",
                filled_qty=Decimal("0.01") if status is OrderStatus.FILLED else Decimal(0),
            )
        )
    late = fill(Side.BUY, "0.01", "100", link="alpha-0-x").model_copy(
        update={"order_id": "our-order"}
    )

    apply_logged(keeper, journal, late)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")


reports = st.lists(
    st.tuples(st.sampled_from(Side), st.integers(min_value=1, max_value=50)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(
    fills=reports,
    order=st.randoms(use_true_random=False),
    duplicates=st.integers(min_value=0, max_value=10),
    rest_after=st.integers(min_value=0, max_value=25),
)
def test_the_books_converge_to_the_venue_whatever_the_order_and_duplicates(
    fills: list[tuple[Side, int]], order: object, duplicates: int, rest_after: int
) -> None:
    # Arrange: the venue's fills of a buy and a sell order, and the reports of them the bot
    # sees (shuffled, repeated).
    links = {Side.BUY: "alpha-0-x", Side.SELL: "alpha-1-x"}
    venue = [
        fill(side, f"{qty / 1000:.3f}", "100", link=links[side], exec_id=f"x{i}", fee="0.01")
        for i, (side, qty) in enumerate(fills)
    ]
    rng = order  # hypothesis' seeded Random
    stream = list(venue) + [rng.choice(venue) for _ in range(duplicates)]  # type: ignore[attr-defined]
    rng.shuffle(stream)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as folder:
        journal = Journal(Path(folder) / "journal.sqlite3")
        for side, link in links.items():
            placed(journal, link, side=side)
        projection = AccountProjection()
        keeper = AccountKeeper(journal, projection)

        # Act: stream reports, and at some point a REST catch-up of everything.
        async def deliver() -> None:
            for index, report in enumerate(stream):
                if index == rest_after:
                    for item in venue:
                        await keeper.apply(item)
                await keeper.apply(report)

        asyncio.run(deliver())
        journal.flush()  # the keeper queues its writes without waiting for them
        replayed = AccountProjection.replay(journal.executions())
        journaled = len(list(journal.executions()))
        journal.close()

    # Assert: each fill counted once; size and fees equal the venue's, live and replayed.
    venue_size = sum((item.signed_qty for item in venue), Decimal(0))
    assert journaled == len(venue)
    for books in (projection, replayed):
        assert books.strategy_size("k", "alpha", "BTCUSDT") == venue_size
        (book,) = books.books()
        assert book.fees == Decimal("0.01") * len(venue)


def test_a_partial_stop_shared_by_three_strategies_adds_up_exactly() -> None:
    projection = AccountProjection()
    for name in ("alpha", "beta", "gamma"):
        apply(projection, fill(Side.BUY, "0.01", "100"), name)

    apply(projection, fill(Side.SELL, "0.02", "95", stop="StopLoss"), None)  # 2/3 each

    assert sum(book.size for book in projection.books()) == Decimal("0.01")
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == 0


def test_a_fill_of_an_expected_order_is_attributed_without_asking_the_journal(
    journal: Journal,
) -> None:
    # The executor's word says whose it is, once the order is journaled (as it is told,
    # before the send): no look-up of the journal's rows on the fill's way.
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    request = make_request(order_link_id="beta-0-y", strategy="beta")
    journal.record_order(request)
    journal.order_owner = None  # type: ignore[method-assign,assignment]  # asked: a TypeError
    keeper.expect_order(request)
    keeper.order_identified("beta-0-y", "o-beta-0-y")  # the venue's answer to the send

    asyncio.run(keeper.apply(fill(Side.BUY, "0.02", "100", link="beta-0-y")))

    assert projection.strategy_size("k", "beta", "BTCUSDT") == Decimal("0.02")


def _held_then_told(
    journal: Journal, told: str | None, *, fill_order_id: str = "o-alpha-0-x"
) -> tuple[AccountProjection, list[tuple[str, str]], Decimal]:
    """A fill under our order's orderLinkId comes before the venue's answer to its send;
    then the executor tells the orderId the answer brought (`told`; None: the order ended
    without the venue taking it). The books, what was logged, and the strategy's size
    while the fill was held."""
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    early = fill(Side.BUY, "0.01", "100", link="alpha-0-x").model_copy(
        update={"order_id": fill_order_id}
    )
    said: list[tuple[str, str]] = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"])))

    async def deliver() -> Decimal:
        await keeper.apply(early)
        while_held = projection.strategy_size("k", "alpha", "BTCUSDT")
        keeper.order_identified("alpha-0-x", told)
        await until(projection.books)
        return while_held

    try:
        while_held = asyncio.run(deliver())
        journal.flush()
    finally:
        logger.remove(sink)
    return projection, said, while_held


def test_a_fill_before_the_answer_is_held_then_booked_as_the_order_the_answer_names(
    journal: Journal,
) -> None:
    projection, _, while_held = _held_then_told(journal, "o-alpha-0-x")

    assert while_held == 0
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")
    assert projection.booked_qty("alpha-0-x") == Decimal("0.01")


def test_a_fill_before_the_answer_of_another_orderid_is_another_clients(
    journal: Journal,
) -> None:
    # Another client's order under our orderLinkId filled; ours got another orderId.
    projection, said, _ = _held_then_told(journal, "our-order", fill_order_id="their-order")

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == Decimal("0.01")
    assert any("another client of the key" in message for _, message in said)


def test_a_fill_before_an_order_the_venue_never_took_is_another_clients(
    journal: Journal,
) -> None:
    # Ours was refused as a duplicate of another client's order under the same orderLinkId,
    # whose fill came first; ours ended Rejected, without an orderId.
    projection, said, _ = _held_then_told(journal, None)

    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == Decimal("0.01")
    assert any("never took from us" in message for _, message in said)


def test_another_clients_order_report_before_the_answer_never_becomes_our_orders(
    journal: Journal,
) -> None:
    # Another client's market buy under our orderLinkId, of our symbol, side and type, is
    # reported (filled) while ours is in flight; ours is then refused as a duplicate.
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    theirs = market_filled("their-order", "0.002", 100)
    their_fill = fill(Side.BUY, "0.002", "100", link="alpha-0-x").model_copy(
        update={"order_id": "their-order"}
    )
    said: list[tuple[str, str]] = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"])))

    async def deliver() -> OrderStatus | None:
        await keeper.apply(theirs)
        await keeper.apply(their_fill)
        record = await journal.call(journal.order, "alpha-0-x")
        keeper.order_identified("alpha-0-x", None)  # ours: Rejected, never taken
        await until(projection.books)
        return record.status if record else None

    try:
        while_held = asyncio.run(deliver())
        journal.flush()
    finally:
        logger.remove(sink)

    record = journal.order("alpha-0-x")
    assert while_held is OrderStatus.PENDING  # their Filled never reached our row
    assert record is not None and record.order_id is None
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert projection.strategy_size("k", UNATTRIBUTED, "BTCUSDT") == Decimal("0.002")
    assert any("another client of the key" in message for _, message in said)


def test_fills_held_for_an_answer_are_booked_in_the_venues_order(journal: Journal) -> None:
    # Our buy fills before the answer to its send; the venue's stop loss then closes the
    # position, before the answer too. Booked in that order, the stop's loss is the strategy's.
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    opening = fill(Side.BUY, "0.01", "100", link="alpha-0-x")
    stopped = fill(Side.SELL, "0.01", "90", stop="StopLoss")

    async def deliver() -> None:
        await keeper.apply(opening)
        await keeper.apply(stopped)
        keeper.order_identified("alpha-0-x", "o-alpha-0-x")
        # Both applied: the books hold the close.
        await until(lambda: any(book.realized_pnl for book in projection.books()))

    asyncio.run(deliver())

    book = {b.strategy: b for b in projection.books()}
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == 0
    assert book["alpha"].realized_pnl == Decimal("-0.1")
    assert UNATTRIBUTED not in book or book[UNATTRIBUTED].realized_pnl == 0


def test_a_stop_reported_while_its_orders_fill_is_held_is_journaled_after_it(
    journal: Journal,
) -> None:
    # Bybit pushes the order, its fill, then the position's stop loss: the stop must be
    # attributed to the order whose fill opened the position, which is held for its answer.
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    filled = market_filled("o-alpha-0-x", "0.01", 100)
    stop = stop_loss(key_name="k", trigger_price=Decimal(95))

    async def deliver() -> None:
        for report in (filled, fill(Side.BUY, "0.01", "100", link="alpha-0-x"), stop):
            await keeper.apply(report)
        keeper.order_identified("alpha-0-x", "o-alpha-0-x")
        await until(projection.books)
        await asyncio.sleep(0.05)  # the stop, after the fill

    asyncio.run(deliver())
    journal.flush()

    exits = journal._exits_of(["alpha-0-x"])  # the order's exits, as `bot orders` shows them
    assert [row[0] for row in exits.get("alpha-0-x", [])] == ["StopLoss"]


def test_a_held_fill_whose_answer_never_comes_is_booked_as_the_orders_after_the_wait(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.account._IDENTITY_WAIT_S", 0.05)
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)

    async def deliver() -> Decimal:
        await keeper.apply(fill(Side.BUY, "0.01", "100", link="alpha-0-x"))
        while_held = projection.strategy_size("k", "alpha", "BTCUSDT")
        await asyncio.sleep(0.2)
        return while_held

    assert asyncio.run(deliver()) == 0
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")


def test_a_held_fill_waits_on_while_its_order_is_still_being_sent(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The venue stalls: the executor still sends (or looks up) the order after the first
    # wait, so the fill waits on for the answer that tells whose it is; once the executor is
    # done with it, the fill is booked as the order's.
    monkeypatch.setattr("bot.account._IDENTITY_WAIT_S", 0.05)
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    sending = {"alpha-0-x"}
    keeper.follow_sends(lambda: sending)

    async def deliver() -> Decimal:
        await keeper.apply(fill(Side.BUY, "0.01", "100", link="alpha-0-x"))
        await asyncio.sleep(0.3)  # six waits while it is still sent
        while_sent = projection.strategy_size("k", "alpha", "BTCUSDT")
        sending.clear()
        await until(projection.books)
        return while_sent

    assert asyncio.run(deliver()) == 0
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")


def test_a_held_fill_waits_no_longer_than_the_cap_however_long_its_order_is_sent(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.account._IDENTITY_WAIT_S", 0.05)
    monkeypatch.setattr("bot.account._IDENTITY_WAIT_MAX_S", 0.2)
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    keeper.follow_sends(lambda: {"alpha-0-x"})  # a send that never ends

    async def deliver() -> None:
        await keeper.apply(fill(Side.BUY, "0.01", "100", link="alpha-0-x"))
        await until(projection.books)

    asyncio.run(deliver())
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.01")


def test_a_fills_reports_are_journaled_together_and_before_any_later_journal_call(
    journal: Journal,
) -> None:
    acknowledged(journal, "alpha-0-x")
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    commits: list[int] = []
    write_all = journal.write_all

    def counted(writes: Sequence[Callable[[], object]], failure: str) -> None:
        commits.append(len(writes))
        write_all(writes, failure)

    journal.write_all = counted  # type: ignore[method-assign]

    async def reports_then_a_read() -> int:
        for index in range(3):  # in one turn of the event loop, as one stream batch
            report = fill(Side.BUY, "0.01", "100", link="alpha-0-x", exec_id=f"x{index}")
            await keeper.apply(report)
        return await journal.call(journal.execution_count)

    assert asyncio.run(reports_then_a_read()) == 3
    assert commits == [3]


@settings(max_examples=60, deadline=None)
@given(
    minutes=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=30),
    order=st.randoms(use_true_random=False),
    duplicates=st.integers(min_value=0, max_value=15),
    restart_at=st.integers(min_value=0, max_value=45),
)
def test_fills_older_than_the_memory_are_still_applied_once(
    minutes: list[int], order: object, duplicates: int, restart_at: int
) -> None:
    # Arrange: fills spread over an hour, against a memory of five minutes; copies of them
    # arrive shuffled, some of them twice at once, and the bot restarts once on the way.
    venue = [
        fill(
            Side.BUY,
            "0.001",
            "100",
            link="alpha-0-x",
            exec_id=f"x{i}",
            at=T0 + timedelta(minutes=m),
        )
        for i, m in enumerate(minutes)
    ]
    rng = order  # hypothesis' seeded Random
    stream = list(venue) + [rng.choice(venue) for _ in range(duplicates)]  # type: ignore[attr-defined]
    rng.shuffle(stream)  # type: ignore[attr-defined]
    memory = timedelta(minutes=5)
    with tempfile.TemporaryDirectory() as folder:
        journal = Journal(Path(folder) / "journal.sqlite3")
        placed(journal, "alpha-0-x")

        def start() -> tuple[AccountKeeper, AccountProjection]:
            fills = list(journal.executions())
            projection = AccountProjection.replay(fills)
            seen = (item for item, _ in fills)
            return AccountKeeper(
                journal, projection, seen_fills=seen, fill_memory=memory
            ), projection

        async def deliver() -> AccountProjection:
            keeper, projection = start()
            for index, report in enumerate(stream):
                if index == restart_at:
                    journal.flush()
                    keeper, projection = start()
                await asyncio.gather(keeper.apply(report), keeper.apply(report))
            return projection

        projection = asyncio.run(deliver())
        journal.flush()
        journaled = len(list(journal.executions()))
        journal.close()

    # Assert: each fill journaled and counted once.
    assert journaled == len(venue)
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == Decimal("0.001") * len(venue)


def test_the_fill_memory_holds_only_its_horizon_however_many_fills_pass() -> None:
    recent = RecentFills(timedelta(minutes=10))
    for second in range(20_000):  # five and a half hours, a fill a second, on two keys
        recent.add(
            fill(Side.BUY, "0.001", "100", key=f"k{second % 2}", at=T0 + timedelta(seconds=second))
        )

    assert len(recent) <= 2 * (10 * 60 // 2 + 1)  # each key's last ten minutes
    newest = T0 + timedelta(seconds=19_999)
    assert recent.seen(fill(Side.BUY, "0.001", "100", key="k1", at=newest)) is False
    too_old = fill(Side.BUY, "0.001", "100", key="k1", at=newest - timedelta(minutes=11))
    assert recent.seen(too_old) is None  # only the journal can tell


class _SlowPositionList(FakeVenue):
    """A venue whose position list is taken at once but answered only when `answer` is set:
    what the stream reports in between is newer than the list."""

    def __init__(self) -> None:
        super().__init__(name="follow_sim")
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def positions(self) -> list[PositionUpdate]:
        listed = await super().positions()  # no fills: Bybit lists no position
        self.asked.set()
        await self.answer.wait()
        return listed


@pytest.mark.parametrize("stream_reports_meanwhile", [True, False])
def test_catching_up_flattens_only_a_position_the_stream_did_not_report_meanwhile(
    journal: Journal, stream_reports_meanwhile: bool
) -> None:
    # Arrange: the books hold a long the venue's list (taken before the stream's report of a
    # bigger one, answered after it) no longer shows.
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    venue = _SlowPositionList()
    opened = sim_position(Decimal("0.01"), ts=datetime.now(UTC) - timedelta(seconds=5))
    grown = sim_position(Decimal("0.02"), ts=datetime.now(UTC))

    async def catch_up() -> None:
        await keeper.apply(opened)
        closing = asyncio.create_task(keeper.close_gap(venue))
        await venue.asked.wait()
        if stream_reports_meanwhile:
            await keeper.apply(grown)
        venue.answer.set()
        await closing

    # Act
    asyncio.run(catch_up())

    # Assert: the stream's report stands; without one, the list's silence is a flat.
    position = projection.position("follow_sim", "BTCUSDT")
    assert position is not None
    assert position.size == (Decimal("0.02") if stream_reports_meanwhile else 0)


class _WalletRefused(FakeVenue):
    """A venue whose wallet read is refused while `refusing` (a 10006 at a busy start)."""

    def __init__(self) -> None:
        super().__init__(name="follow_sim")
        self.refusing = True

    async def wallet(self) -> WalletUpdate:
        if self.refusing:
            raise RetryableError("Too many visits!", retry_after_s=1.0, ret_code=10006)
        return await super().wallet()


def test_a_gap_close_that_missed_a_part_is_not_taken_for_a_closed_gap(journal: Journal) -> None:
    # A stream goes live after its gap close whatever it could read: the start then took
    # that key as read, and the part it missed waited for the reconciliation loop.
    keeper = AccountKeeper(journal, AccountProjection())
    venue = _WalletRefused()

    async def close_twice() -> tuple[bool, bool, bool, bool]:
        before = keeper.gap_closed("follow_sim")
        first = await keeper.close_gap(venue)
        missed = keeper.gap_closed("follow_sim")
        venue.refusing = False
        await keeper.close_gap(venue)
        return before, first, missed, keeper.gap_closed("follow_sim")

    assert asyncio.run(close_twice()) == (False, False, False, True)


@pytest.mark.parametrize(
    ("cancel_type", "size", "warned"),
    [
        ("CancelByUser", "0.01", True),  # someone cancelled the long's stop: unprotected
        ("UNKNOWN", "0.01", False),  # ended by the venue, as when the level is cleared
        ("CancelByUser", "0", False),  # the position is gone: nothing left to protect
        ("CancelByUser", "-0.01", False),  # a Sell stop protects no short
    ],
)
def test_a_stop_cancelled_at_the_venue_under_an_open_position_is_warned_of_once(
    journal: Journal, cancel_type: str, size: str, warned: bool
) -> None:
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    stop = stop_loss(status=OrderStatus.CANCELLED, cancel_type=cancel_type)
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message} {extra[notify]}")

    async def report() -> None:
        await keeper.apply(sim_position(Decimal(size)))
        for _ in range(2):  # reported again (a stream that reconnected)
            await keeper.apply(stop)

    try:
        asyncio.run(report())
    finally:
        logger.remove(handler)

    expected = 1 if warned else 0
    assert len([line for line in lines if "StopLoss" in line and "foreign" in line]) == expected


def test_a_stop_moved_at_the_venue_to_a_level_the_bot_did_not_set_is_warned_of_once(
    journal: Journal,
) -> None:
    keeper = AccountKeeper(journal, AccountProjection())
    keeper.expect_order(
        make_request(order_link_id="follow-0-sl", key_name="follow_sim", stop_loss=Decimal(95000))
    )
    keeper.expect_level("follow_sim", "BTCUSDT", "StopLoss", Decimal(96000))  # a stop move
    levels = (95000, 95000, 96000, 50000, 50000)  # resized, moved by the bot, then by another

    said = apply_logged(
        keeper, journal, *(stop_loss(trigger_price=Decimal(level)) for level in levels)
    )

    warnings = [message for level, message in said if level == "WARNING"]
    assert len(warnings) == 1
    assert (
        "StopLoss of the BTCUSDT position on key follow_sim was moved at the venue" in (warnings[0])
    )
    assert "from 96000 to 50000, not by the bot" in warnings[0]


def test_a_stop_moved_back_to_a_level_the_bot_set_in_an_earlier_run_is_not_warned_of(
    journal: Journal,
) -> None:
    # Orders of an earlier run (or more than memory holds) carried these stops; this keeper,
    # freshly started, was told of none of them.
    for index, level in enumerate(range(93000, 93010)):
        journal.record_order(
            make_request(
                order_link_id=f"follow-{index}-z", key_name="follow_sim", stop_loss=Decimal(level)
            )
        )
    keeper = AccountKeeper(journal, AccountProjection())
    levels = (93009, 93000, 50000)  # seen at one level, moved to another of the bot's, then not

    said = apply_logged(
        keeper, journal, *(stop_loss(trigger_price=Decimal(level)) for level in levels)
    )

    warnings = [message for level, message in said if level == "WARNING"]
    assert len(warnings) == 1 and "from 93000 to 50000" in warnings[0]


def test_a_stop_first_seen_at_a_level_the_bot_never_set_is_warned_of(
    journal: Journal,
) -> None:
    # The bot set 95000 on this position (in an earlier run); after a restart, or on a new
    # exit order, the venue shows the stop at 90000: another client amended or set it.
    journal.record_order(
        make_request(order_link_id="follow-0-r", key_name="follow_sim", stop_loss=Decimal(95000))
    )
    keeper = AccountKeeper(journal, AccountProjection())

    said = apply_logged(
        keeper,
        journal,
        stop_loss(trigger_price=Decimal(95000)),  # the bot's own: nothing to say
        stop_loss(trigger_price=Decimal(90000)).model_copy(update={"order_id": "other-exit"}),
    )

    warnings = [message for level, message in said if level == "WARNING"]
    assert len(warnings) == 1
    assert "was set at the venue to 90000, a level the bot never set" in warnings[0]


def test_a_foreign_stop_level_is_warned_of_once_not_again_after_each_restart(
    journal: Journal,
) -> None:
    # Reproduced (a rival moving our stops, the bot killed between): one move by another
    # client was warned of when it came, then again after each restart as "a level the bot
    # never set", the catch-up hearing of the same exit order with a memory started empty.
    journal.record_order(
        make_request(order_link_id="follow-0-q", key_name="follow_sim", stop_loss=Decimal(95000))
    )
    first = apply_logged(
        Account(journal, {}).keeper,
        journal,
        stop_loss(trigger_price=Decimal(95000)),
        stop_loss(trigger_price=Decimal(90000)),
    )
    restarted = apply_logged(
        Account(journal, {}).keeper, journal, stop_loss(trigger_price=Decimal(90000))
    )
    moved_while_down = apply_logged(
        Account(journal, {}).keeper, journal, stop_loss(trigger_price=Decimal(89000))
    )

    def warnings(said: list[tuple[str, str]]) -> list[str]:
        return [message for level, message in said if level == "WARNING"]

    assert len(warnings(first)) == 1 and "from 95000 to 90000" in warnings(first)[0]
    assert warnings(restarted) == []
    assert len(warnings(moved_while_down)) == 1
    assert "from 90000 to 89000" in warnings(moved_while_down)[0]


def test_a_stop_of_a_position_the_bot_never_protected_is_not_judged(journal: Journal) -> None:
    keeper = AccountKeeper(journal, AccountProjection())

    said = apply_logged(keeper, journal, stop_loss(trigger_price=Decimal(90000)))

    assert [message for level, message in said if level == "WARNING"] == []


def test_a_position_that_closes_has_its_closed_pnl_fetched_on_the_next_passes(
    journal: Journal,
) -> None:
    keeper = AccountKeeper(journal, AccountProjection())
    apply_logged(keeper, journal, sim_position(Decimal("0.01")))
    before_close = keeper.closed_pnl_due("follow_sim")
    apply_logged(keeper, journal, sim_position(Decimal(0)), sim_position(Decimal(0)))

    due = [keeper.closed_pnl_due("follow_sim") for _ in range(4)]

    assert before_close is False
    assert due == [True, True, True, False]  # a few passes, as the record may come late


def test_a_position_report_that_repeats_the_last_is_not_written_again(journal: Journal) -> None:
    """Bybit pushes the position on every order create, amend and cancel, changed or not."""
    heard: list[PositionUpdate] = []
    keeper = AccountKeeper(journal, AccountProjection(), position_updated=heard.append)
    first = datetime.now(UTC) - timedelta(seconds=2)
    opened = sim_position(Decimal("0.01"), ts=first)
    repeated = sim_position(Decimal("0.01"), ts=first + timedelta(seconds=1))

    apply_logged(keeper, journal, opened, repeated)
    [kept] = journal.positions()
    apply_logged(keeper, journal, sim_position(Decimal("0.02"), ts=datetime.now(UTC)))
    [grown] = journal.positions()

    assert kept.ts == first  # the repeat wrote nothing
    assert grown.size == Decimal("0.02")
    assert len(heard) == 3  # its listeners heard it (the executor checks its leverage)


def test_closed_pnl_records_older_than_yesterday_are_not_kept() -> None:
    # Only today's are read; a long run kept one record per closing order forever.
    projection = AccountProjection()
    start = datetime(2026, 11, 20, 12, tzinfo=UTC)
    for day in range(5):
        for n in range(3):
            projection.apply_closed_pnl(
                ClosedPnl(
                    order_id=f"{day}-{n}",
                    key_name="k",
                    symbol="BTCUSDT",
                    closed_qty=Decimal("0.001"),
                    closed_pnl=Decimal(1),
                    ts=start + timedelta(days=day),
                )
            )

    last = start + timedelta(days=4)
    assert projection.venue_closed_pnl_today("k", last) == 3
    assert len(projection._closed) == 6  # the last day's and the day before's


@pytest.mark.parametrize(
    ("books", "venue", "told"),
    [
        # A flip turned alpha's long short; a crash cut off the cancel of its old targets.
        ({"alpha": (Side.SELL, "0.02")}, "-0.02", [StrandedBy("k", "BTCUSDT", "alpha", True)]),
        ({"alpha": (Side.BUY, "0.02")}, "0.02", [StrandedBy("k", "BTCUSDT", "alpha", False)]),
        # The venue's report is behind the books (or ahead of them): nothing is judged yet.
        ({"alpha": (Side.SELL, "0.02")}, "0.02", []),
        # Another client's opposite position on the key: the books do not agree.
        ({"alpha": (Side.SELL, "0.02"), None: (Side.BUY, "0.03")}, "0.01", []),
        ({}, "0", [StrandedBy("k", "BTCUSDT")]),  # closed: every reduce-only order of ours
    ],
    ids=["short", "long", "report-behind", "another-clients-opposite", "flat"],
)
def test_each_pass_tells_the_positions_whose_reduce_only_orders_on_one_side_reduce_nothing(
    journal: Journal,
    books: dict[str | None, tuple[Side, str]],
    venue: str,
    told: list[StrandedBy],
) -> None:
    projection = AccountProjection()
    heard: list[StrandedBy] = []
    keeper = AccountKeeper(journal, projection, position_closed=heard.append)
    for strategy, (side, qty) in books.items():
        apply(projection, fill(side, qty, "97000"), strategy)
    projection.apply_position(sim_position(Decimal(venue), key_name="k"))

    keeper.tell_closed_again("k")

    assert heard == told


class _LaggingFillList(FakeVenue):
    """A venue whose fill list shows a fill only from its `shown_from`-th asking on."""

    def __init__(self, lagging: Execution, shown_from: int) -> None:
        super().__init__("k")
        self.lagging, self.shown_from, self.asked = lagging, shown_from, 0

    async def executions_since(self, since: datetime | None) -> list[Execution]:
        self.asked += 1
        return [self.lagging] if self.asked >= self.shown_from else []


@pytest.mark.parametrize("shown_from", [2, 99], ids=["shown-on-asking-again", "never-shown"])
def test_a_start_asks_again_for_the_fills_of_orders_it_settled_filled(
    journal: Journal, shown_from: int
) -> None:
    # Reproduced (chaos soak): the start found a flip Filled at the venue, whose fill list
    # did not show the fill yet; one fetch, and the signals queued behind it were sized from
    # books without it (a flip of twice the size, a close refused 110017).
    journal.record_order(
        make_request(order_link_id="alpha-0-flip", strategy="alpha", side=Side.SELL)
    )
    journal.record_order_event(
        OrderEvent(
            order_link_id="alpha-0-flip",
            status=OrderStatus.FILLED,
            order_id="o-alpha-0-flip",
            filled_qty=Decimal("0.01"),
            avg_price=Decimal(97000),
        )
    )
    projection = AccountProjection()
    keeper = AccountKeeper(journal, projection)
    venue = _LaggingFillList(
        fill(Side.SELL, "0.01", "97000", link="alpha-0-flip", at=datetime.now(UTC)), shown_from
    )
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        booked = asyncio.run(keeper.catch_up_settled(venue, ["alpha-0-flip"]))
    finally:
        logger.remove(sink)

    found = shown_from == 2
    assert booked is found
    assert projection.strategy_size("k", "alpha", "BTCUSDT") == (Decimal("-0.01") if found else 0)
    assert any("alpha-0-flip filled beyond the fills it lists" in line for line in said) is (
        not found
    )
