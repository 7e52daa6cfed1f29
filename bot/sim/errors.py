"""Bybit V5 return codes the simulator answers with, and the exceptions that carry them.

```
Exception
├── SimError               a business answer: HTTP 200 with a non-zero retCode
└── ValueError
    └── DuplicateAccountError   add_account() with an api key the exchange already holds
```
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["MAX_RET_MSG_CHARS", "DuplicateAccountError", "RetCode", "SimError", "clip_message"]

#: The longest retMsg the simulator answers. Bybit's messages are a sentence; the simulator's
#: longest own ones are about 250 characters. Past this, a message echoing what a client sent
#: (a 60 KB `symbol`) is cut in the middle, keeping what it says before and after the value.
MAX_RET_MSG_CHARS = 300
_KEEP_TAIL_CHARS = 100
#: Room for the `...[N characters cut]...` marker.
_MARKER_ROOM_CHARS = 40


class RetCode(IntEnum):
    """The subset of Bybit V5 retCodes the simulator produces, under Bybit's meaning."""

    OK = 0
    PARAMS_ERROR = 10001
    TIMESTAMP_OUT_OF_WINDOW = 10002
    INVALID_API_KEY = 10003
    INVALID_SIGN = 10004
    PERMISSION_DENIED = 10005
    TOO_MANY_VISITS = 10006
    UNMATCHED_IP = 10010
    SERVER_TIMEOUT = 10016
    #: "request path not found or request method is invalid"
    ROUTE_NOT_FOUND = 10017
    #: The WebSocket trade API's (`/v5/trade`): an op it does not know, a second auth, a
    #: reqId the connection used before.
    OP_NOT_FOUND = 10404
    REPEAT_AUTH = 20001
    REQ_ID_DUPLICATED = 20006
    API_KEY_EXPIRED = 33004
    #: Set Trading Stop with the TP/SL already set, or with nothing to set.
    TPSL_NOT_MODIFIED = 34040
    ORDER_NOT_EXISTS = 110001
    INSUFFICIENT_AVAILABLE_BALANCE = 110007
    #: "The number of stop orders exceeds maximum limit allowed" (10 per symbol)
    TOO_MANY_CONDITIONAL_ORDERS = 110009
    REDUCE_ONLY_RULE_NOT_SATISFIED = 110017
    #: "Not allowed to have more than 500 active orders." (per symbol and account)
    TOO_MANY_ACTIVE_ORDERS = 110020
    POSITION_MODE_NOT_MODIFIED = 110025
    HEDGE_MODE_NOT_SUPPORTED = 110029
    LEVERAGE_NOT_MODIFIED = 110043
    #: Set leverage lower than the account's free margin can carry.
    AVAILABLE_MARGIN_INSUFFICIENT = 110044
    DUPLICATE_ORDER_LINK_ID = 110072
    #: An order that could take the position past its risk limit's value: "Order placement
    #: failed as your position may exceed the max limit. ..."
    POSITION_LIMIT_EXCEEDED = 110090
    #: A conditional order's trigger already passed: "expect Rising (110092) / Falling
    #: (110093), but trigger_price ... current ..."
    TRIGGER_NOT_ABOVE_PRICE = 110092
    TRIGGER_NOT_BELOW_PRICE = 110093
    ORDER_VALUE_BELOW_MINIMUM = 110094


def clip_message(message: str) -> str:
    """`message` cut to `MAX_RET_MSG_CHARS`, saying how much was cut, if it is longer."""
    if len(message) <= MAX_RET_MSG_CHARS:
        return message
    head = MAX_RET_MSG_CHARS - _KEEP_TAIL_CHARS - _MARKER_ROOM_CHARS
    cut = len(message) - head - _KEEP_TAIL_CHARS
    return f"{message[:head]}...[{cut} characters cut]...{message[-_KEEP_TAIL_CHARS:]}"


class SimError(Exception):
    """A request the simulator refuses the way Bybit would: HTTP 200, non-zero retCode; a
    `ret_msg` echoing a long value a client sent is clipped (`clip_message`)."""

    def __init__(self, ret_code: RetCode, ret_msg: str) -> None:
        self.ret_code = ret_code
        self.ret_msg = ret_msg = clip_message(ret_msg)
        super().__init__(f"{ret_msg} (retCode {int(ret_code)})")


class DuplicateAccountError(ValueError):
    """An account with this api key already exists; keys are never silently replaced."""
