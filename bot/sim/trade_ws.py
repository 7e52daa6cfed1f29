"""The simulator's WebSocket trade API: `/v5/trade`, as Bybit serves it on stream.bybit.com.

After `auth` (as the private stream's, answered `{retCode, retMsg, op, connId}`), a request
`{"reqId", "header": {"X-BAPI-TIMESTAMP", "X-BAPI-RECV-WINDOW"}, "op", "args": [one order]}`
with `op` `order.create`, `order.amend` or `order.cancel` does what the REST route does (the
same checks, the same per-UID rate limit, counted together with REST's), and is answered
`{"reqId", "retCode", "retMsg", "op", "data", "retExtInfo", "header", "connId"}`: `data` is
REST's `result`, `header` its rate-limit headers with `Traceid` and `Timenow`. Bybit's own
codes: 10404 for an op it does not know or a category other than linear, 20006 for a reqId
the connection used before, 10003 before `auth`. The batch ops (`order.create-batch`...)
are not served (10404: the REST batch routes are), and the faults the REST gateway injects
(lost answers, 10016, delays) are not injected here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel

from bot.sim.auth import check_key_use, check_time_window
from bot.sim.errors import RetCode, SimError
from bot.sim.exchange import SimExchange
from bot.sim.params import AmendOrderParams, CancelOrderParams, PlaceOrderParams, parse_params

__all__ = ["TRADE_PATH", "Limiter", "TradeDesk"]

TRADE_PATH: Final = "/v5/trade"
#: How many reqIds a connection remembers to refuse repeats (the oldest forgotten first).
_REQ_IDS_KEPT: Final = 10_000

#: (api_key, REST path, requests) -> (the answer's rate-limit headers, how many fit, the
#: headers of a refusal): the REST gateway's per-UID limits, shared.
Limiter = Callable[[str, str, int], tuple[dict[str, str], int, dict[str, str]]]


@dataclass(frozen=True)
class _Op:
    path: str  # the REST route it stands for: its rate limit and its count in /sim/stats
    model: type[BaseModel]
    run: Callable[[str, Any], dict[str, Any]]


class TradeDesk:
    """Answers the order requests of `/v5/trade` connections."""

    def __init__(self, exchange: SimExchange, limit: Limiter) -> None:
        self._exchange = exchange
        self._limit = limit
        self._ops: Mapping[str, _Op] = {
            "order.create": _Op("/v5/order/create", PlaceOrderParams, exchange.place_order),
            "order.amend": _Op("/v5/order/amend", AmendOrderParams, exchange.amend_order),
            "order.cancel": _Op("/v5/order/cancel", CancelOrderParams, exchange.cancel_order),
        }

    def answer(
        self,
        api_key: str | None,
        client_host: str | None,
        seen: dict[bytes, None],
        request: dict[str, Any],
    ) -> dict[str, Any]:
        """The answer to one request of a connection from `client_host`, authenticated as
        `api_key` (None: not yet), which used the reqIds in `seen` before (this one's is
        added)."""
        op = str(request.get("op"))[:32]
        first: dict[str, Any] = {} if request.get("reqId") is None else {"reqId": request["reqId"]}
        try:
            found, order = self._check(api_key, client_host, seen, op, request)
        except SimError as exc:
            return self._answer(first, op, exc.ret_code, exc.ret_msg, {}, {})
        assert api_key is not None  # `_check` refused it otherwise
        self._exchange.record_signed(api_key, found.path)
        headers, granted, refused = self._limit(api_key, found.path, 1)
        data: dict[str, Any] = {}
        if granted == 0:
            code, message, headers = RetCode.TOO_MANY_VISITS, "Too many visits!", refused
        else:
            try:
                data = found.run(api_key, parse_params(found.model, order))
            except SimError as exc:
                code, message = exc.ret_code, exc.ret_msg
            else:
                code, message = RetCode.OK, "OK"
        self._exchange.record(found.path, 200, int(code))
        return self._answer(first, op, code, message, data, headers)

    def _answer(
        self,
        first: dict[str, Any],
        op: str,
        code: RetCode,
        message: str,
        data: dict[str, Any],
        headers: dict[str, str],
    ) -> dict[str, Any]:
        header = {**headers, "Traceid": uuid.uuid4().hex, "Timenow": str(self._exchange.now_ms())}
        return first | {
            "retCode": int(code),
            "retMsg": message,
            "op": op,
            "data": data,
            "retExtInfo": {},
            "header": header,
        }

    def _check(
        self,
        api_key: str | None,
        client_host: str | None,
        seen: dict[bytes, None],
        op: str,
        request: dict[str, Any],
    ) -> tuple[_Op, dict[str, Any]]:
        """The op and its one order; SimError for what Bybit's trade gateway refuses (as REST
        would: the time window, the key's expiry and its bound IPs, for every order)."""
        found = self._ops.get(op)
        if found is None:
            raise SimError(RetCode.OP_NOT_FOUND, f"op type is not found: {op}")
        if api_key is None:
            raise SimError(RetCode.INVALID_API_KEY, "Request not authorized")
        req_id = request.get("reqId")
        if req_id is not None and not isinstance(req_id, str):
            raise SimError(RetCode.PARAMS_ERROR, "params error: reqId must be a string")
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
            raise SimError(RetCode.PARAMS_ERROR, "params error: args must hold exactly one order")
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
                del seen[next(iter(seen))]
        return found, args[0]
