"""A cancel the bot asked for (journaled before the request) that a kill kept from the venue,
or that failed, is carried out by the next look at the order: at start-up, before the
signals left unfinished run again, and by the reconciliation loop.

Reproduced by the chaos soak (seed 3106, `--kills 20 --faults 0.4 --rate 45`, kills during
start-up too): a ladder's targets, whose cancel the bot had journaled when a flip turned
their position, were left resting by a kill; the next flip turned the position back, so no
later pass took them for stranded, and two of them filled, taking profit on the new position
at the old ladder's levels (whose own targets were never laid: the old ones took their room).
Other runs left such targets resting for up to 156 s on the side that only adds to the
position, and a flip was declined meanwhile for the strategy's unfinished orders."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from bot.execution.config import ExecutionConfig
from bot.execution.executor import Executor
from bot.journal import Journal
from bot.messages import OrderStatus, OrderType, Side
from bot.venue.fake import FakeVenue
from tests.factories import make_request

TARGET = make_request(
    order_link_id="ladder-1-x",
    strategy="ladder",
    leg=1,
    side=Side.SELL,
    order_type=OrderType.LIMIT,
    price=Decimal(98000),
    reduce_only=True,
)


def _resting_target(path: Path, venue: FakeVenue, *, cancel_asked: bool) -> None:
    """The last run: the target placed and resting, then (if `cancel_asked`) its cancel
    journaled, and the bot killed before the venue heard of it."""
    journal = Journal(path)
    try:
        journal.record_order(TARGET)
        placed = asyncio.run(venue.place_order(TARGET))
        journal.record_order_event(placed)
        if cancel_asked:
            journal.record_cancel_requested(TARGET.order_link_id)
    finally:
        journal.close()


def _start(path: Path, venue: FakeVenue, **reconcile: object) -> OrderStatus:
    """The next start's settling of unfinished orders; the target's journaled status."""
    journal = Journal(path)
    try:
        executor = Executor(journal, {"k": venue}, ExecutionConfig())
        asyncio.run(executor.reconcile("k", limit=None, **reconcile))  # type: ignore[arg-type]
        record = journal.order(TARGET.order_link_id)
        assert record is not None
        return record.status
    finally:
        journal.close()


def test_a_cancel_asked_for_before_a_kill_is_carried_out_at_the_next_start(
    tmp_path: Path,
) -> None:
    venue, path = FakeVenue(), tmp_path / "journal.sqlite3"
    _resting_target(path, venue, cancel_asked=True)

    status = _start(path, venue, resend=True)

    assert venue.orders[TARGET.order_link_id].status is OrderStatus.CANCELLED
    assert status is OrderStatus.CANCELLED


def test_the_loop_carries_out_a_cancel_that_failed(tmp_path: Path) -> None:
    venue, path = FakeVenue(), tmp_path / "journal.sqlite3"
    _resting_target(path, venue, cancel_asked=True)

    status = _start(path, venue)  # a pass of the reconciliation loop

    assert venue.orders[TARGET.order_link_id].status is OrderStatus.CANCELLED
    assert status is OrderStatus.CANCELLED


def test_a_resting_order_whose_cancel_was_never_asked_for_stays(tmp_path: Path) -> None:
    venue, path = FakeVenue(), tmp_path / "journal.sqlite3"
    _resting_target(path, venue, cancel_asked=False)

    status = _start(path, venue, resend=True)

    assert venue.calls["cancel_order"] == 0
    assert venue.orders[TARGET.order_link_id].status is OrderStatus.NEW
    assert status is OrderStatus.NEW
