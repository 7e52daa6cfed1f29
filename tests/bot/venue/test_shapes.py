"""The venue's rows as the bot reads them: what an order event says of why it ended."""

from __future__ import annotations

from typing import Any

import pytest

from bot.messages import OrderStatus
from bot.venue.shapes import order_event


def row(status: str, **fields: str) -> dict[str, Any]:
    return {
        "orderLinkId": "follow-0-x",
        "orderId": "o-1",
        "orderStatus": status,
        "cumExecQty": "0",
        "avgPrice": "",
        "rejectReason": "EC_NoError",
        "updatedTime": "1795000000000",
        **fields,
    }


@pytest.mark.parametrize(
    ("status", "fields", "reason"),
    [
        # cancelled by hand on Bybit, or by another client of the key: the operator must see it
        ("Cancelled", {"cancelType": "CancelByUser"}, "cancelled at the venue (CancelByUser)"),
        # as Bybit shows such an order: its rejectReason is the cancel request, no rejection
        (
            "Cancelled",
            {"cancelType": "CancelByUser", "rejectReason": "EC_PerCancelRequest"},
            "cancelled at the venue (CancelByUser)",
        ),
        (
            "Cancelled",
            {"cancelType": "CancelByReduceOnly"},
            "cancelled at the venue (CancelByReduceOnly)",
        ),
        ("Cancelled", {"cancelType": "UNKNOWN"}, ""),
        (
            "Rejected",
            {"rejectReason": "EC_PostOnlyWillTakeLiquidity"},
            "EC_PostOnlyWillTakeLiquidity",
        ),
        ("New", {"cancelType": "UNKNOWN"}, ""),
    ],
)
def test_an_order_event_says_why_the_order_ended(
    status: str, fields: dict[str, str], reason: str
) -> None:
    event = order_event(row(status, **fields))

    assert event.status is OrderStatus(status)
    assert event.reason == reason


@pytest.mark.parametrize(
    ("created", "expected_ms"),
    [("1795000000000", 1795000000000), ("0", None), ("", None), (None, None)],
)
def test_an_order_events_creation_time_is_the_venues_or_unknown(
    created: str | None, expected_ms: int | None
) -> None:
    # "0" (not said) must not read as the epoch: that would be "made before any send of ours".
    fields = {} if created is None else {"createdTime": created}
    at = order_event(row("New", **fields)).venue_created_at
    assert (None if at is None else round(at.timestamp() * 1000)) == expected_ms
