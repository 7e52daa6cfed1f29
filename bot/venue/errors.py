"""Every venue failure, classified once, by what the caller must do.

    VenueError
     ├── RetryableError       wait `retry_after_s` (rate limit, clock drift), then send again
     ├── AmbiguousError       the order may exist: look it up by orderLinkId before anything else
     ├── DuplicateOrderError  110072: an order with this orderLinkId exists; it is ours
     ├── OrderRejectedError   terminal; Bybit's reason is journaled
     ├── KeyFatalError        the key is bad (invalid, no permission, expired): stop its strategies
     └── HeldError            not sent: the caller's last word, once pacing let it go, held it

`classify()` is the one table that maps pybit's and requests' exceptions onto this tree.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError

__all__ = [
    "AMBIGUOUS_CODES",
    "CLOCK_DRIFT_CODE",
    "FATAL_CODES",
    "IP_BAN_S",
    "IP_WIDE_CODES",
    "LEVERAGE_NOT_MODIFIED_CODE",
    "ORDER_NOT_FOUND_CODE",
    "RETRYABLE_CODES",
    "TPSL_NOT_MODIFIED_CODE",
    "AmbiguousError",
    "DuplicateOrderError",
    "HeldError",
    "KeyFatalError",
    "OrderRejectedError",
    "RetryableError",
    "VenueError",
    "classify",
]

CLOCK_DRIFT_CODE: Final = 10002
RATE_LIMIT_CODE: Final = 10006
IP_RATE_LIMIT_CODE: Final = 10018  # "Exceeded the IP Rate Limit"
IP_BANNED_CODE: Final = 10009  # "IP has been banned"
#: Failures that stop every request from this machine (Bybit limits and bans an IP).
IP_WIDE_CODES: Final = frozenset({403, IP_RATE_LIMIT_CODE, IP_BANNED_CODE})
RETRYABLE_CODES: Final = frozenset(
    {CLOCK_DRIFT_CODE, RATE_LIMIT_CODE, IP_RATE_LIMIT_CODE, IP_BANNED_CODE}
)
#: The venue may or may not have acted: 10000 "Server Timeout", 10016 "Server error" (or
#: "Service is restarting"), 429 in the body "The trading service is experiencing a high
#: server load. Please retry", 110079 "The order is processing and can not be operated,
#: please try again later", 40004 "the order is modified during the process of replacing,
#: please check the order status again" (Bybit's V5 error codes).
AMBIGUOUS_CODES: Final = frozenset({10000, 10016, 429, 110079, 40004})
DUPLICATE_ORDER_CODE: Final = 110072
ORDER_NOT_FOUND_CODE: Final = 110001  # "order does not exist" (cancel, amend)
LEVERAGE_NOT_MODIFIED_CODE: Final = 110043  # set-leverage to the leverage already set
TPSL_NOT_MODIFIED_CODE: Final = 34040  # trading-stop to the TP/SL already set
FATAL_CODES: Final = frozenset({10003, 10004, 10005, 10010, 33004})
_DEFAULT_RETRY_AFTER_S: Final = 1.0
#: How long Bybit bans an IP after HTTP 403 (its rate-limit page: "at least 10 minutes").
IP_BAN_S: Final = 600.0


class VenueError(Exception):
    """A venue call failed. `ret_code` is Bybit's retCode (or the HTTP status), when known."""

    def __init__(self, message: str, *, ret_code: int | None = None, operation: str = "") -> None:
        self.message = message
        self.ret_code = ret_code
        self.operation = operation
        code = f" (retCode {ret_code})" if ret_code is not None else ""
        super().__init__(f"{operation}: {message}{code}" if operation else f"{message}{code}")


class RetryableError(VenueError):
    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float,
        ret_code: int | None = None,
        operation: str = "",
    ) -> None:
        super().__init__(message, ret_code=ret_code, operation=operation)
        self.retry_after_s = retry_after_s


class AmbiguousError(VenueError):
    pass


class DuplicateOrderError(VenueError):
    pass


class OrderRejectedError(VenueError):
    pass


class KeyFatalError(VenueError):
    pass


class HeldError(VenueError):
    """Never sent: the caller's `hold`, asked once the request's turn under the rate limits
    came, gave a reason (a halt since). Nothing reached the venue."""


def classify(exc: BaseException, operation: str, *, clock_offset_ms: int = 0) -> VenueError:
    """Translate one exception from a pybit call into the tree above.

    `clock_offset_ms` (the venue's clock minus ours) converts Bybit's reset timestamps.
    """
    if isinstance(exc, VenueError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return _from_ret_code(
            int(exc.status_code), str(exc.message), exc.resp_headers, operation, clock_offset_ms
        )
    if isinstance(exc, FailedRequestError):
        return _from_http_failure(exc, operation, clock_offset_ms)
    if isinstance(exc, requests.RequestException):
        # Timeout, refused or reset connection, truncated answer: the request may have arrived.
        return AmbiguousError(f"{type(exc).__name__}: no complete answer", operation=operation)
    if isinstance(exc, ValueError):
        # pybit raises ValueError on a 10006 whose reset time has passed, among others.
        return AmbiguousError(f"client error {type(exc).__name__}: {exc}", operation=operation)
    return AmbiguousError(f"unexpected {type(exc).__name__}", operation=operation)


def _from_ret_code(
    code: int,
    message: str,
    headers: Mapping[str, str] | None,
    operation: str,
    clock_offset_ms: int,
) -> VenueError:
    if code in RETRYABLE_CODES:
        if code == CLOCK_DRIFT_CODE:
            wait_s = 0.0  # resend at once, once the clock is resynchronised
        elif code == IP_BANNED_CODE:
            wait_s = _retry_after_header_s(headers, IP_BAN_S)
        else:
            wait_s = _retry_after_s(headers, clock_offset_ms)
        return RetryableError(message, retry_after_s=wait_s, ret_code=code, operation=operation)
    if code in AMBIGUOUS_CODES:
        return AmbiguousError(message, ret_code=code, operation=operation)
    if code == DUPLICATE_ORDER_CODE:
        return DuplicateOrderError(message, ret_code=code, operation=operation)
    if code in FATAL_CODES:
        return KeyFatalError(message, ret_code=code, operation=operation)
    return OrderRejectedError(message, ret_code=code, operation=operation)


def _from_http_failure(exc: FailedRequestError, operation: str, clock_offset_ms: int) -> VenueError:
    status = int(exc.status_code)
    if exc.resp_headers is None:
        # pybit's own failures (undecodable JSON, exhausted retries): nothing says it failed.
        return AmbiguousError(str(exc.message), ret_code=status, operation=operation)
    if status == 429:
        return RetryableError(
            "HTTP 429: rate limit",
            retry_after_s=_retry_after_s(exc.resp_headers, clock_offset_ms),
            ret_code=status,
            operation=operation,
        )
    if status == 403:
        # Bybit's edge bans an IP that broke its limit: "wait for at least 10 minutes".
        return RetryableError(
            "HTTP 403: IP rate limit exceeded, the IP is banned for a while",
            retry_after_s=_retry_after_header_s(exc.resp_headers, IP_BAN_S),
            ret_code=status,
            operation=operation,
        )
    if status == 401:
        # Bybit answers some authentication failures with HTTP 401 instead of a retCode.
        return KeyFatalError("HTTP 401: the key was refused", ret_code=status, operation=operation)
    if status >= 500:
        return AmbiguousError(f"HTTP {status}", ret_code=status, operation=operation)
    return OrderRejectedError(f"HTTP {status}", ret_code=status, operation=operation)


def _retry_after_s(headers: Mapping[str, str] | None, clock_offset_ms: int) -> float:
    """Seconds until the rate limit resets, from Bybit's X-Bapi-Limit-Reset-Timestamp (ms, on
    the venue's clock)."""
    reset = (headers or {}).get("X-Bapi-Limit-Reset-Timestamp")
    try:
        if not reset:
            return _DEFAULT_RETRY_AFTER_S
        return max(0.0, (int(reset) - clock_offset_ms) / 1000 - time.time())
    except ValueError:
        return _DEFAULT_RETRY_AFTER_S


def _retry_after_header_s(headers: Mapping[str, str] | None, default: float) -> float:
    """A standard `Retry-After` in seconds when the answer has one, else `default`."""
    value = (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:
        return default
