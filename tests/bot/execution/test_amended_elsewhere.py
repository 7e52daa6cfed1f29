"""The executor's warnings of an order of ours changed at the venue by another client: an
amendment said once per change, not again for a report that changes nothing of it; a cancel
said unless the bot asked for it, before a restart too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from loguru import logger

from bot.execution.config import ExecutionConfig
from bot.execution.executor import Executor
from bot.journal import Journal
from bot.messages import OrderEvent, OrderStatus, OrderType, Side
from bot.venue.fake import FakeVenue
from bot.venue.shapes import cancelled_reason
from tests.factories import make_request

LINK = "follow-0-x"


def resting(path: Path) -> Journal:
    """A journal holding a resting 0.01 buy at 96000 with its stop at 95000."""
    journal = Journal(path)
    journal.record_order(
        make_request(
            order_link_id=LINK,
            order_type=OrderType.LIMIT,
            price=Decimal(96000),
            stop_loss=Decimal(95000),
        )
    )
    return journal


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Executor]:
    """An executor whose journal holds the `resting` order."""
    journal = resting(tmp_path / "journal.sqlite3")
    yield Executor(journal, {"k": FakeVenue()}, ExecutionConfig())
    journal.close()


def report(**terms: object) -> OrderEvent:
    """The venue's report of that order, as placed unless `terms` say otherwise."""
    fields: dict[str, object] = {
        "order_link_id": LINK,
        "status": OrderStatus.NEW,
        "order_id": "o1",
        "symbol": "BTCUSDT",
        "side": Side.BUY,
        "order_type": OrderType.LIMIT,
        "venue_reduce_only": False,
        "venue_qty": Decimal("0.01"),
        "venue_price": Decimal(96000),
        "venue_stop_loss": Decimal(95000),
        "venue_take_profit": Decimal(0),
    }
    return OrderEvent(**(fields | terms))


def amendments_said(executor: Executor, *reports: OrderEvent) -> list[str]:
    """The amendment warnings the executor gives when the venue sends `reports`."""
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        for event in reports:
            executor.order_updated(event)
    finally:
        logger.remove(sink)
    return [line for line in said if "was amended at the venue" in line]


def test_a_dearer_limit_is_not_said_again_when_then_only_the_quantity_moves(
    executor: Executor,
) -> None:
    # The quantity of an opening order is the risk gate's to say; the limit, said once.
    dearer = report(venue_price=Decimal(96500))
    grown = report(venue_price=Decimal(96500), venue_qty=Decimal("0.02"))

    lines = amendments_said(executor, dearer, grown)

    assert len(lines) == 1 and "price 96500, not 96000" in lines[0]


def test_the_same_terms_spelt_otherwise_are_no_news(executor: Executor) -> None:
    dearer, respelt = report(venue_price=Decimal(96500)), report(venue_price=Decimal("96500.0"))

    lines = amendments_said(executor, dearer, respelt)

    assert len(lines) == 1


def test_an_amendment_said_before_a_restart_is_not_said_again_after_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    dearer = report(venue_price=Decimal(96500))
    journal = resting(path)
    before = amendments_said(Executor(journal, {"k": FakeVenue()}, ExecutionConfig()), dearer)
    journal.close()

    journal = Journal(path)  # the bot started again; the stream reports the order as it is
    try:
        after = Executor(journal, {"k": FakeVenue()}, ExecutionConfig())
        again = amendments_said(after, dearer)
        moved = amendments_said(after, report(venue_price=Decimal(96700)))
    finally:
        journal.close()

    assert len(before) == 1 and again == []
    assert len(moved) == 1 and "price 96700, not 96000" in moved[0]


def cancels_said(executor: Executor, event: OrderEvent) -> list[str]:
    """The foreign-cancel warnings the executor gives when the venue reports `event`."""
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        executor.order_updated(event)
    finally:
        logger.remove(sink)
    return [line for line in said if "cancelled at the venue, not by the bot" in line]


def test_the_bots_own_cancel_seen_only_after_a_restart_is_not_anothers(tmp_path: Path) -> None:
    # Reproduced by the chaos soak: the bot sent a cancel and was killed before its result
    # was journaled; the next start took the venue's CancelByUser for another client's hand.
    path = tmp_path / "journal.sqlite3"
    journal = resting(path)
    journal.record_cancel_requested(LINK)  # as `cancel` journals it, before it asks the venue
    journal.close()
    cancelled = report(status=OrderStatus.CANCELLED, reason=cancelled_reason("CancelByUser"))

    journal = Journal(path)
    try:
        said = cancels_said(Executor(journal, {"k": FakeVenue()}, ExecutionConfig()), cancelled)
    finally:
        journal.close()

    assert said == []


def test_a_cancel_the_bot_never_asked_for_is_said(executor: Executor) -> None:
    cancelled = report(status=OrderStatus.CANCELLED, reason=cancelled_reason("CancelByUser"))

    assert len(cancels_said(executor, cancelled)) == 1


def test_the_cancel_is_journaled_before_the_venue_is_asked(tmp_path: Path) -> None:
    journal = resting(tmp_path / "journal.sqlite3")
    venue = FakeVenue()
    seen_at_the_venue: list[bool] = []
    cancel_order = venue.cancel_order

    async def watched(order_link_id: str, symbol: str) -> bool:
        record = journal.unfinished(order_link_id)
        seen_at_the_venue.append(record is not None and record.cancel_requested)
        return await cancel_order(order_link_id, symbol)

    venue.cancel_order = watched  # type: ignore[method-assign]
    executor = Executor(journal, {"k": venue}, ExecutionConfig())
    try:
        (record,) = journal.unfinished_orders()
        asyncio.run(executor.cancel(record.request))
    finally:
        journal.close()

    assert seen_at_the_venue == [True]
