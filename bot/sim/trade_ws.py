"""The simulator's WebSocket trade API: `/v5/trade`, as Bybit serves it on stream.bybit.com.

After `auth` (as the private stream's, answered `{retCode, retMsg, op, connId}`), a request
`{"reqId", "header": {"X-BAPI-TIMESTAMP", "X-BAPI-RECV-WINDOW"}, "op", "args": [one item]}`
does what the REST route does (the same checks, the same per-UID rate limit, counted together
with REST's), and is answered `{"reqId", "retCode", "retMsg", "op", "data", "retExtInfo",
"header", "connId"}`: `data` is REST's `result`, `header` its rate-limit headers with
`Traceid` and `Timenow`. The ops: `order.create`, `order.amend` and `order.cancel` (the item
is one order, `retExtInfo` is `{}`), and `order.create-batch`, `order.amend-batch` and
`order.cancel-batch` (the item is `{category, request: [orders]}` as the REST batch routes
take it; each order counts against the limit, fails alone, and has its code in
`retExtInfo.list`). Bybit's own codes: 10404 for an op it does not know or a category other
than linear, 20006 for a reqId the connection used before, 10001 for a reqId that is not a
string or is longer than 36 characters, 10003 before `auth`.

The REST gateway's faults strike here too, where a socket can carry them: `rate_limit_10006`
(refused as over the limit, nothing done), `timeout_10016` (refused before anything is done),
`accept_then_10016` (done, then answered 10016) and
`drop_response_after_accept` (a create done and never answered: the client's request times
out). Delays and HTTP errors are the HTTP gateway's only.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel

from bot.sim.auth import check_key_use, check_time_window
from bot.sim.errors import RetCode, SimError
from bot.sim.exchange import SimExchange
from bot.sim.params import (
    AmendOrderParams,
    BatchAmendParams,
    BatchCancelParams,
    BatchPlaceParams,
    CancelOrderParams,
    PlaceOrderParams,
    batch_size,
    parse_params,
)

__all__ = ["TRADE_PATH", "Limiter", "TradeDesk"]

TRADE_PATH: Final = "/v5/trade"
#: How many reqIds a connection remembers to refuse repeats (the oldest forgotten first).
_REQ_IDS_KEPT: Final = 10_000
#: Bybit: "The length cannot exceed 36 characters" (a UUID's, as pybit sends).
_REQ_ID_MAX_CHARS: Final = 36

#: (api_key, REST path, requests) -> (the answer's rate-limit headers, how many fit, the
#: headers of a refusal): the REST gateway's per-UID limits, shared.
Limiter = Callable[[str, str, int], tuple[dict[str, str], int, dict[str, str]]]


#: An op's work: (api_key, parsed params, how many orders the rate limit let through) ->
#: (`data`, `retExtInfo`).
_Run = Callable[[str, Any, int], tuple[dict[str, Any], dict[str, Any]]]


#: An answer's (retCode, retMsg, data, retExtInfo).
_Outcome = tuple[RetCode, str, dict[str, Any], dict[str, Any]]


@dataclass(frozen=True)
class _Op:
    path: str  # the REST route it stands for: its rate limit and its count in /sim/stats
    model: type[BaseModel]
    run: _Run
    creates: bool = False  # a lost answer (`drop_response_after_accept`) strikes only creates
    batch: bool = False  # the rate limit counts each of its orders


def _single(run: Callable[[str, Any], dict[str, Any]]) -> _Run:
    return lambda api_key, params, granted: (run(api_key, params), {})


class TradeDesk:
    """Answers the order requests of `/v5/trade` connections."""

    def __init__(self, exchange: SimExchange, limit: Limiter) -> None:
        self._exchange = exchange
        self._limit = limit
        place, amend, cancel = exchange.place_order, exchange.amend_order, exchange.cancel_order
        self._ops: Mapping[str, _Op] = {
            "order.create": _Op("/v5/order/create", PlaceOrderParams, _single(place), creates=True),
            "order.amend": _Op("/v5/order/amend", AmendOrderParams, _single(amend)),
            "order.cancel": _Op("/v5/order/cancel", CancelOrderParams, _single(cancel)),
            "order.create-batch": _Op(
                "/v5/order/create-batch",
                BatchPlaceParams,
                exchange.place_batch,
                creates=True,
                batch=True,
            ),
            "order.amend-batch": _Op(
                "/v5/order/amend-batch", BatchAmendParams, exchange.amend_batch, batch=True
            ),
            "order.cancel-batch": _Op(
                "/v5/order/cancel-batch", BatchCancelParams, exchange.cancel_batch, batch=True
            ),
        }

    def answer(
        self,
        api_key: str | None,
        client_host: str | None,
        seen: OrderedDict[bytes, None],
        request: dict[str, Any],
    ) -> dict[str, Any] | None:
        """The answer to one request of a connection from `client_host`, authenticated as
        `api_key` (None: not yet), which used the reqIds in `seen` before (this one's is
        added); None when a fault loses it."""
        op = str(request.get("op"))[:32]
        first: dict[str, Any] = {} if request.get("reqId") is None else {"reqId": request["reqId"]}
        try:
            found, item = self._check(api_key, client_host, seen, op, request)
        except SimError as exc:
            return self._answer(first, op, exc.ret_code, exc.ret_msg, {}, {}, {})
        assert api_key is not None  # `_check` refused it otherwise
        self._exchange.record_signed(api_key, found.path)
        headers, granted, refused = self._limit(
            api_key, found.path, batch_size(item) if found.batch else 1
        )
        if granted == 0 or self._exchange.inject("rate_limit_10006"):
            outcome: _Outcome | None = (RetCode.TOO_MANY_VISITS, "Too many visits!", {}, {})
            headers = refused
        else:
            outcome = self._run(found, api_key, item, granted)
        if outcome is None:  # done, and the answer lost
            self._exchange.record(found.path, None, None)
            return None
        code, message, data, ext_info = outcome
        self._exchange.record(found.path, 200, int(code))
        return self._answer(first, op, code, message, data, ext_info, headers)

    def _run(self, found: _Op, api_key: str, item: dict[str, Any], granted: int) -> _Outcome | None:
        """Do what the request asks, with the REST gateway's faults: refused before (10016),
        or done and then answered 10016 or (a create) never answered (None)."""
        if self._exchange.inject("timeout_10016"):
            return RetCode.SERVER_TIMEOUT, "Server error.", {}, {}
        try:
            data, ext_info = found.run(api_key, parse_params(found.model, item), granted)
        except SimError as exc:
            return exc.ret_code, exc.ret_msg, {}, {}
        if found.creates and self._exchange.inject("drop_response_after_accept"):
            return None
        if self._exchange.inject("accept_then_10016"):
            return RetCode.SERVER_TIMEOUT, "Server error.", {}, {}
        return RetCode.OK, "OK", data, ext_info

    def _answer(
        self,
        first: dict[str, Any],
        op: str,
        code: RetCode,
        message: str,
        data: dict[str, Any],
        ext_info: dict[str, Any],
        headers: dict[str, str],
    ) -> dict[str, Any]:
        header = {**headers, "Traceid": uuid.uuid4().hex, "Timenow": str(self._exchange.now_ms())}
        return first | {
            "retCode": int(code),
            "retMsg": message,
            "op": op,
            "data": data,
            "retExtInfo": ext_info,
            "header": header,
        }

    def _check(
        self,
        api_key: str | None,
        client_host: str | None,
        seen: OrderedDict[bytes, None],
        op: str,
        request: dict[str, Any],
    ) -> tuple[_Op, dict[str, Any]]:
        """The op and its one item (an order, or a batch of them); SimError for what Bybit's
        trade gateway refuses (as REST would: the time window, the key's expiry and its bound
        IPs, for every request)."""
        found = self._ops.get(op)
        if found is None:
            raise SimError(RetCode.OP_NOT_FOUND, f"op type is not found: {op}")
        if api_key is None:
            raise SimError(RetCode.INVALID_API_KEY, "Request not authorized")
        req_id = request.get("reqId")
        if req_id is not None and not isinstance(req_id, str):
            raise SimError(RetCode.PARAMS_ERROR, "params error: reqId must be a string")
        if req_id is not None and len(req_id) > _REQ_ID_MAX_CHARS:
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: reqId is longer than {_REQ_ID_MAX_CHARS} characters",
            )
        header = request.get("header")
        if not isinstance(header, dict) or "X-BAPI-TIMESTAMP" not in header:
            raise SimError(
                RetCode.PARAMS_ERROR, "params error: header.X-BAPI-TIMESTAMP is required"
            )
        server_ms = check_time_window(
            self._exchange,
            str(header["X-BAPI-TIMESTAMP"]),
            str(header.get("X-BAPI-RECV-WINDOW", "")),
        )
        spec = self._exchange.account_spec(api_key)
        if spec is None:
            raise SimError(RetCode.INVALID_API_KEY, "API key is invalid.")
        check_key_use(spec, server_ms, client_host)
        args = request.get("args")
        if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict)):
            raise SimError(RetCode.PARAMS_ERROR, "params error: args must hold exactly one item")
        category = args[0].get("category")
        if category != "linear":  # the only one simulated
            raise SimError(
                RetCode.OP_NOT_FOUND, f"category is not correct or supported: {category}"
            )
        if req_id is not None:  # a valid request's id, kept as a digest: bounded memory
            digest = hashlib.blake2b(req_id.encode("utf-8", "replace"), digest_size=16).digest()
            if digest in seen:
                raise SimError(RetCode.REQ_ID_DUPLICATED, f"reqId is duplicated: {req_id[:64]}")
            seen[digest] = None
            if len(seen) > _REQ_IDS_KEPT:
                seen.popitem(last=False)
        return found, args[0]
