"""The exposure ledger follows each order in flight as the venue reports it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from loguru import logger

from bot.journal import Journal
from bot.messages import OrderEvent, OrderStatus
from bot.risk.exposure import ExposureLedger, Reservation, reserve_unfinished
from tests.factories import make_request

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
    assert (ledger.worst_position("follow", "BTCUSDT"), ledger.open_orders("follow")) == (0, 0)


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

    reserve_unfinished(ledger, journal.unfinished_orders())  # the next start
    ledger.follow(_report(OrderStatus.NEW, "0.1"))  # the stream's first report since

    assert warnings == []
    assert ledger.worst_position("follow", "BTCUSDT") == Decimal("0.1")
    journal.close()
