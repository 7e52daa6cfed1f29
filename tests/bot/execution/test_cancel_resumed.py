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
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from loguru import logger

from bot.account import StrandedBy
from bot.execution.config import ExecutionConfig
from bot.execution.executor import Executor
from bot.journal import Journal
from bot.messages import OrderStatus, OrderType, Side
from bot.venue.errors import AmbiguousError, RetryableError, VenueError
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


def _cancels_fail_first(venue: FakeVenue, failures: Sequence[VenueError]) -> None:
    """The venue's next cancels raise `failures` in turn; the ones after go through."""
    cancel_order, left = venue.cancel_order, list(failures)

    async def failing(order_link_id: str, symbol: str) -> bool:
        if left:
            raise left.pop(0)
        return await cancel_order(order_link_id, symbol)

    venue.cancel_order = failing  # type: ignore[method-assign]


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


def test_a_stranded_target_whose_cancel_failed_is_no_alarm_and_the_loop_cancels_it(
    tmp_path: Path,
) -> None:
    # The soak's seeds 3103 and 3105: three 10002 in a row (clock-skew bursts) failed the
    # cancel of a closed position's target, and the trader was told (notify venue_error) to
    # cancel it by hand, while the next pass cancelled it a second later.
    venue, path = FakeVenue(), tmp_path / "journal.sqlite3"
    _resting_target(path, venue, cancel_asked=False)
    refusal = RetryableError("invalid request, timestamp", retry_after_s=0.0, ret_code=10002)
    _cancels_fail_first(venue, [refusal] * 3)
    journal = Journal(path)
    notified: list[str] = []
    sink = logger.add(
        lambda m: notified.append(m.record["message"]),
        filter=lambda r: r["extra"].get("notify") == "venue_error",
    )

    async def closed_then_a_pass() -> None:
        executor = Executor(journal, {"k": venue}, ExecutionConfig())
        executor.position_closed(StrandedBy("k", "BTCUSDT", "ladder", was_long=True))
        while executor.stranded():  # noqa: ASYNC110 - the executor exposes no event for it
            await asyncio.sleep(0.01)
        await executor.reconcile("k", limit=None)

    try:
        asyncio.run(closed_then_a_pass())
        record = journal.order(TARGET.order_link_id)
    finally:
        logger.remove(sink)
        journal.close()

    assert notified == []
    assert record is not None and record.status is OrderStatus.CANCELLED
    assert venue.orders[TARGET.order_link_id].status is OrderStatus.CANCELLED


def test_a_cancel_carried_out_again_that_the_venue_does_not_answer_waits_for_the_next_pass(
    tmp_path: Path,
) -> None:
    # Seed 3106 again, with the change above: a 503 on the cancel carried out again was
    # notified as "reconciliation of ... failed" (venue_error), though the next pass retries.
    venue, path = FakeVenue(), tmp_path / "journal.sqlite3"
    _resting_target(path, venue, cancel_asked=True)
    # Every try of one cancel unanswered.
    _cancels_fail_first(venue, [AmbiguousError("HTTP 503 (retCode 503)")] * 3)
    notified: list[str] = []
    sink = logger.add(
        lambda m: notified.append(m.record["message"]),
        filter=lambda r: r["extra"].get("notify") == "venue_error",
    )
    try:
        first = _start(path, venue)
        second = _start(path, venue)
    finally:
        logger.remove(sink)

    assert notified == []
    assert first is OrderStatus.NEW and second is OrderStatus.CANCELLED
