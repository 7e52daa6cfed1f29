"""The one classification table at the venue boundary, per DESIGN.md."""

from __future__ import annotations

import time

import pytest
import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError

from bot.venue.errors import (
    AmbiguousError,
    DuplicateOrderError,
    KeyFatalError,
    OrderRejectedError,
    RetryableError,
    VenueError,
    classify,
)


def bybit(code: int, headers: dict[str, str] | None = None) -> InvalidRequestError:
    return InvalidRequestError("POST /v5/order/create", "msg", code, "12:00:00", headers or {})


def http(status: int, headers: dict[str, str] | None = None) -> FailedRequestError:
    return FailedRequestError("POST /v5/order/create", "HTTP", status, "12:00:00", headers)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (bybit(10002), RetryableError),
        (bybit(10006), RetryableError),
        (http(429, {}), RetryableError),
        (http(403, {}), RetryableError),
        (bybit(10000), AmbiguousError),
        (bybit(10016), AmbiguousError),
        (bybit(429), AmbiguousError),  # retCode 429 in the body: high server load, retry
        (bybit(110079), AmbiguousError),  # the order is processing, try again later
        (bybit(40004), AmbiguousError),  # modified while being replaced: read it again
        (http(502, {}), AmbiguousError),
        (http(409, None), AmbiguousError),  # pybit could not decode the answer
        (requests.ReadTimeout(), AmbiguousError),
        (requests.ConnectionError(), AmbiguousError),
        (requests.exceptions.ChunkedEncodingError(), AmbiguousError),
        (ValueError("sleep length must be non-negative"), AmbiguousError),
        (bybit(110072), DuplicateOrderError),
        (bybit(10001), OrderRejectedError),
        (bybit(110007), OrderRejectedError),
        (bybit(110017), OrderRejectedError),
        (bybit(110094), OrderRejectedError),
        (http(404, {}), OrderRejectedError),
        (bybit(10003), KeyFatalError),
        (bybit(10004), KeyFatalError),
        (bybit(10005), KeyFatalError),
        (bybit(10010), KeyFatalError),
        (bybit(33004), KeyFatalError),
        (http(401, {}), KeyFatalError),
    ],
)
def test_every_failure_lands_in_one_class(exc: BaseException, expected: type[VenueError]) -> None:
    classified = classify(exc, "place_order")

    assert type(classified) is expected
    assert classified.operation == "place_order"


def test_rate_limit_waits_until_bybits_reset_timestamp() -> None:
    reset_ms = int((time.time() + 2.5) * 1000)

    classified = classify(bybit(10006, {"X-Bapi-Limit-Reset-Timestamp": str(reset_ms)}), "op")

    assert isinstance(classified, RetryableError)
    assert 1.5 < classified.retry_after_s <= 2.5


def test_a_reset_time_in_the_past_means_no_wait() -> None:
    classified = classify(bybit(10006, {"X-Bapi-Limit-Reset-Timestamp": "1000"}), "op")

    assert isinstance(classified, RetryableError)
    assert classified.retry_after_s == 0
