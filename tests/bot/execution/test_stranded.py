"""Reduce-only orders left by a closed position are cancelled, but the next legs of a signal
whose opening order turned the position."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from bot.account import StrandedBy
from bot.execution.config import ExecutionConfig
from bot.execution.executor import Executor
from bot.journal import Journal
from bot.messages import OrderEvent, OrderRequest, OrderStatus, OrderType, Side
from bot.venue.fake import FakeVenue
from tests.factories import make_request


def _target(signal_id: str, leg: int, price: int) -> OrderRequest:
    return make_request(
        order_link_id=f"ladder-{leg}-{signal_id}",
        strategy="ladder",
        signal_id=signal_id,
        leg=leg,
        side=Side.SELL,
        order_type=OrderType.LIMIT,
        qty=Decimal("0.002"),
        price=Decimal(price),
        reduce_only=True,
    )


def _placed(journal: Journal, venue: FakeVenue, request: OrderRequest) -> None:
    journal.record_order(request)
    journal.record_order_event(asyncio.run(venue.place_order(request)))


@pytest.mark.parametrize(
    ("cause", "kept"),
    [
        # The ladder's first target closed the strategy's share (the rest of the position was
        # closed elsewhere), another client's position keeping the venue's open: its second
        # target would take profit on the next position (found by a probe).
        (_target("lad-1", 1, 98000), False),
        # The flip's entry turned the position: its own targets are for the new one.
        (make_request(order_link_id="ladder-0-lad-1", strategy="ladder", signal_id="lad-1"), True),
    ],
    ids=["closed by its own target", "turned by its own entry"],
)
def test_a_closed_positions_resting_leg_is_cancelled_unless_its_signal_turned_it(
    tmp_path: Path, cause: OrderRequest, kept: bool
) -> None:
    venue, journal = FakeVenue(), Journal(tmp_path / "j.sqlite3")
    leg = _target("lad-1", 2, 99000)
    try:
        _placed(journal, venue, cause)
        journal.record_order_event(
            OrderEvent(
                order_link_id=cause.order_link_id,
                status=OrderStatus.FILLED,
                order_id=venue.orders[cause.order_link_id].order_id,
                filled_qty=cause.qty,
                avg_price=Decimal(98000),
            )
        )
        _placed(journal, venue, leg)

        async def closed() -> None:
            executor = Executor(journal, {"k": venue}, ExecutionConfig())
            executor.position_closed(
                StrandedBy("k", "BTCUSDT", "ladder", None, cause.order_link_id)
            )
            await executor.stranded_cancelled([leg.order_link_id], 10)

        asyncio.run(closed())
    finally:
        journal.close()

    expected = OrderStatus.NEW if kept else OrderStatus.CANCELLED
    assert venue.orders[leg.order_link_id].status is expected
