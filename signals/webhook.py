"""Webhook sources: `POST /webhooks/<source>`, and `GET /webhooks/<source>/signals/<id>`.

Checks run cheapest-first, and an unauthenticated sender learns nothing about validation:

    429 rate limit → 403 address not allowed → 408 body not sent in time → 413 body size →
    415 compressed body → 401 authentication (429 from an address locked out after repeated
    failures) → 400 JSON → 422 signal fields → journal → 202 accepted | 200 duplicate

A lockout refuses only requests that fail authentication: a correctly signed request from
the same address (TradingView sends every user's alerts from a few shared addresses) is
never refused because a stranger failed from there. It does not cap guessing below the rate
limit: an HMAC secret or a token of 32 characters or more cannot be guessed at that pace.

Every 429 carries `Retry-After`. Every refusal is counted (`bot_signal_rejections_total`) and
journaled with the source, what kind, why and the client's address (never a secret, token or
signature); a flood of rate-limited requests is journaled once a minute per address.

Authentication (see `signals.config.AuthMode`): an `X-Signature` header is always accepted
(`signals.voiceofchain`: HMAC-SHA256 over "<t>." + body, any of the source's secrets, so a
secret rotates without downtime); the token modes accept a token of at least 32 characters,
compared in constant time, in the body (its field is removed before anything is stored) or in
the query string. The client's address is the peer's, or, from a trusted proxy only, the last
untrusted address of `X-Forwarded-For`.

The 202 body names a status URL; a GET on it, authenticated like the webhook (a signature over
an empty body, or the token in the query string), answers what became of the signal.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal, NoReturn

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from loguru import logger
from pydantic import BaseModel, Field, SecretStr

from bot import metrics
from bot.app import DirectRoute
from bot.bodies import BodyRefused, read_body
from bot.messages import (
    SIGNAL_ID_PATTERN,
    SignalError,
    is_unicode,
    load_json,
    parse_signal,
    utc_now,
)
from signals.base import FloodNotes, SignalSink
from signals.presets import ResolvedSource, map_payload
from signals.voiceofchain import (
    SIGNATURE_HEADER,
    any_signature_problem,
    one_signature_header,
    signed_at,
)

__all__ = ["MIN_TOKEN_LENGTH", "OnReject", "SignalStatus", "WebhookReceiver"]

MIN_TOKEN_LENGTH: Final = 32
_FAILURE_WINDOW_S: Final = 60.0
_MAX_CLIENTS: Final = 4096
#: Refusals made before a sender is known (its pace, its lockout, a body too large, too slow
#: or cut off, or compressed): journaled once per `FLOOD_NOTE_S` per address, as anyone can
#: repeat them.
_FLOOD_KINDS: Final = frozenset(
    {"rate_limited", "locked_out", "too_large", "timeout", "incomplete", "unsupported_encoding"}
)

#: Hears of every refusal: (kind, reason, client address). Must not block.
OnReject = Callable[[str, str, str], None]
#: The status of a signal by (source, id): its decisions and orders, or None if unknown.
SignalStatus = Callable[[str, str], Awaitable[dict[str, Any] | None]]


class SignalBody(BaseModel):
    """A signal as the signal contract (README, "Signals") defines it (the OpenAPI document of
    the route)."""

    id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="unique per source")
    symbol: str = Field(description="Bybit symbol, e.g. BTCUSDT")
    side: Literal["buy", "sell", "long", "short"] | None = None
    action: Literal["open", "close"] = "open"
    entry: float | None = Field(None, gt=0, description="limit price; absent = market")
    stop_loss: float | None = Field(None, gt=0)
    take_profit: float | list[float] | None = None
    leverage: float | None = Field(None, gt=0)
    strategy: str | None = None
    ts: str | int = Field(description="ISO-8601 or epoch milliseconds")


class Accepted(BaseModel):
    status: Literal["accepted", "duplicate"]
    id: str
    status_url: str


class Problem(BaseModel):
    error: str
    detail: str
    problems: list[dict[str, str]] | None = None


class _ClientRateLimit:
    """A token bucket per client address: `rate_per_s` on average, `burst` at once.

    Per client, so a flood from one address cannot crowd out the real sender. At most
    `_MAX_CLIENTS` buckets are kept; the least recently seen goes first.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, updated

    def wait_s(self, client: str) -> float:
        """0 if the request may pass (and is counted), else seconds until one may."""
        now = self._clock()
        tokens, updated = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - updated) * self._rate)
        allowed = tokens >= 1
        self._buckets[client] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > _MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return 0.0 if allowed else (1 - tokens) / self._rate


class _Lockout:
    """Addresses that failed authentication `limit` times within a minute wait `lockout_s`.

    At most `_MAX_CLIENTS` lockouts are kept: the earliest (ending first) goes first, and
    those over are forgotten as new ones come, so addresses without end cannot grow it.
    """

    def __init__(self, limit: int, lockout_s: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._lockout_s = lockout_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked: OrderedDict[str, float] = OrderedDict()

    def wait_s(self, client: str) -> float:
        until = self._locked.get(client)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._locked[client]
            return 0.0
        return left

    def failed(self, client: str) -> bool:
        """Count a failure; True if it locks the address out."""
        now = self._clock()
        recent = self._failures.pop(client, deque())
        recent.append(now)
        while recent and now - recent[0] > _FAILURE_WINDOW_S:
            recent.popleft()
        self._failures[client] = recent
        if len(self._failures) > _MAX_CLIENTS:
            self._failures.popitem(last=False)
        if len(recent) >= self._limit:
            self._lock_out(client, now)
            recent.clear()
            return True
        return False

    def _lock_out(self, client: str, now: float) -> None:
        # Kept in the order they end (one lockout_s for all, added as they start).
        locked = self._locked
        locked.pop(client, None)
        locked[client] = now + self._lockout_s
        while locked and (len(locked) > _MAX_CLIENTS or next(iter(locked.values())) <= now):
            locked.popitem(last=False)


def _read_json(body: bytes) -> tuple[object, str | None]:
    """The body as JSON, and why the strict reading (`load_json`) refuses it, if it does.
    A body only the strict reading refuses (a key given twice) is still read as JSON reads
    it, for authentication alone: a TradingView alert carrying the right token is then
    refused for its JSON (400), not taken for a wrong token (401, towards a lockout of
    every alert from TradingView's shared addresses)."""
    try:
        return load_json(body), None
    except ValueError as strict:
        try:
            return json.loads(body), str(strict)
        except (ValueError, RecursionError):
            return None, str(strict)


def _signed_at(header: str | None) -> int | None:
    """The time of an authenticated request's signature (None: it was not signed)."""
    return None if header is None else signed_at(header)


class _Refused(Exception):
    """A request answered with a 4xx: status, kind (its journal and metrics label), detail."""

    def __init__(self, status: int, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.extra = status, kind, detail, extra


class WebhookReceiver:
    """Receives one source's signals over HTTP and hands them to the bot's sink."""

    def __init__(
        self,
        source: ResolvedSource,
        secrets: Sequence[SecretStr],
        sink: SignalSink,
        *,
        token: SecretStr | None = None,
        on_reject: OnReject = lambda kind, reason, client: None,
        status: SignalStatus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`secrets` are the source's signing secrets (any may sign); `token` its token, needed
        by the token modes (at least MIN_TOKEN_LENGTH characters)."""
        if source.auth != "signature" and (
            token is None or len(token.get_secret_value()) < MIN_TOKEN_LENGTH
        ):
            raise ValueError(
                f"source {source.name} authenticates with a token ({source.auth}): its token "
                f"must be at least {MIN_TOKEN_LENGTH} characters"
            )
        self.name = self.source = source.name
        self._resolved = source
        self._config = source.config
        self._secrets = tuple(secrets)
        self._token = token
        self._sink = sink
        self._on_reject = on_reject
        self._status = status
        self._clock = clock
        self._rate_limit = _ClientRateLimit(
            self._config.requests_per_s, self._config.burst, time.monotonic
        )
        self._lockout = _Lockout(
            self._config.auth_failures_before_lockout, self._config.lockout_s, time.monotonic
        )
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in source.allowed_ips)
        self._proxies = tuple(
            ipaddress.ip_network(n, strict=False) for n in self._config.trusted_proxies
        )
        self._floods = FloodNotes()
        self._journal_failures = FloodNotes()

    @property
    def path(self) -> str:
        return f"/webhooks/{self.source}"

    async def run(self) -> None:
        """A webhook has no background work: requests come to its routes."""

    def health(self) -> dict[str, Any]:
        return {"ready": True, "route": self.path, "auth": self._resolved.auth}

    def router(self) -> APIRouter:
        router = APIRouter()
        errors: dict[int | str, dict[str, Any]] = {
            code: {"model": Problem, "description": what}
            for code, what in (
                (400, "body is not JSON"),
                (401, "not authenticated; the body says how"),
                (403, "the client's address is not allowed"),
                (408, "the body was not sent in time"),
                (413, "body too large"),
                (415, "the body is compressed (Content-Encoding): send it as it is"),
                (422, "not a valid signal; `problems` names each field"),
                (429, "too many requests, or locked out after failed logins; see Retry-After"),
                (503, "could not be journaled: retry"),
            )
        }
        router.add_api_route(
            self.path,
            self.receive,
            methods=["POST"],
            route_class_override=DirectRoute,  # a signal's way to its order: no middleware
            status_code=202,
            summary=f"Receive a {self.source} signal",
            response_model=Accepted,
            responses={200: {"model": Accepted, "description": "duplicate: nothing new"}, **errors},
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": SignalBody.model_json_schema()},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                }
            },
        )
        router.add_api_route(
            self.path + "/signals/{signal_id}",
            self.signal_status,
            methods=["GET"],
            summary=f"What became of a {self.source} signal: its decisions and orders",
            responses={404: {"model": Problem, "description": "no such signal"}, **errors},
        )
        return router

    # routes -----------------------------------------------------------------------------------

    async def receive(self, request: Request) -> JSONResponse:
        client = self._client(request)
        try:
            return await self._receive(request, client)
        except _Refused as refused:
            return self._refuse(refused, client)

    async def signal_status(self, request: Request, signal_id: str) -> JSONResponse:
        client = self._client(request)
        try:
            self._admit(client)
            self._authenticate(request, b"", None, client)
            impossible = self._impossible_id(signal_id)
            if impossible is not None:
                return impossible
            found = await self._status(self.source, signal_id) if self._status else None
        except _Refused as refused:
            return self._refuse(refused, client)
        if found is None:
            return _answer(404, "unknown signal", f"no {self.source} signal with id {signal_id}")
        return JSONResponse(found)

    def _impossible_id(self, signal_id: str) -> JSONResponse | None:
        """The 404 for an id no signal can have (not echoed: it may be 60 KiB of anything)."""
        if re.fullmatch(SIGNAL_ID_PATTERN, signal_id):
            return None
        return _answer(
            404,
            "unknown signal",
            f"no {self.source} signal has that id: an id is 1-64 characters of A-Z a-z 0-9 . _ : -",
        )

    # steps ------------------------------------------------------------------------------------

    async def _receive(self, request: Request, client: str) -> JSONResponse:
        self._admit(client)
        body = await self._read_body(request)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):  # read whole first: the connection stays usable
            raise _Refused(
                415,
                "unsupported_encoding",
                f"Content-Encoding {encoding[:40]!r} is not accepted: send the body uncompressed",
            )
        document, problem = _read_json(body)
        payload = self._authenticate(request, body, document, client)
        if problem is not None:  # only an authenticated sender learns what is wrong with it
            raise _Refused(400, "invalid_json", f"the body is not a JSON document: {problem}")
        if not isinstance(payload, dict):
            raise _Refused(422, "invalid", "the body must be a JSON object (a signal)")
        received_at = utc_now()
        mapping = self._resolved.mapping
        if mapping is not None:
            payload = map_payload(
                payload,
                mapping,
                body=body,
                source=self.source,
                received_at=received_at,
                id_bucket_s=self._config.id_bucket_s,
                signed_at=_signed_at(request.headers.get(SIGNATURE_HEADER)),
            )
        try:
            signal = parse_signal(self.source, payload, received_at)
        except SignalError as exc:
            raise _Refused(
                422,
                "invalid",
                str(exc),
                problems=[{"field": field, "reason": reason} for field, reason in exc.problems],
            ) from None
        try:
            is_new = await self._sink(signal)
        except Exception as exc:  # the sender must retry, not believe the signal was stored
            # An unexpected failure's traceback once in a while: senders retrying against it
            # would otherwise log the same one per request, at their own pace. The journal's
            # own conditions (locked, full, too slow) say all in one line.
            expected = isinstance(exc, (sqlite3.OperationalError, OSError))  # TimeoutError too
            if not expected and self._journal_failures.first_in_a_while(self.source):
                logger.exception("could not journal signal {id}", id=signal.id)
            else:
                logger.error(
                    "could not journal signal {id}: {what}: {error}",
                    id=signal.id,
                    what=type(exc).__name__,
                    error=exc,
                )
            return _answer(503, "not stored", "the signal could not be journaled; retry later")
        body_out = {
            "status": "accepted" if is_new else "duplicate",
            "id": signal.id,
            "status_url": f"{self.path}/signals/{signal.id}",
        }
        return JSONResponse(body_out, status_code=202 if is_new else 200)

    def _admit(self, client: str) -> None:
        """Rate limit and address allowlist."""
        wait = self._rate_limit.wait_s(client)
        if wait:
            raise _Refused(429, "rate_limited", "too many requests; slow down", retry_after=wait)
        if self._allowed and not _within(client, self._allowed):
            raise _Refused(403, "address_not_allowed", f"{client} may not send to {self.path}")

    async def _read_body(self, request: Request) -> bytes:
        """The raw body (`bot.bodies.read_body`): bounded in size and time; a sender that
        hangs up before it is whole is refused (nothing is journaled, the refusal is kept)."""
        try:
            return await read_body(
                request, self._config.max_body_bytes, self._config.body_timeout_s, "a signal"
            )
        except BodyRefused as refused:
            raise _Refused(refused.status, refused.kind, refused.detail) from None

    def _authenticate(self, request: Request, body: bytes, payload: object, client: str) -> object:
        """The payload the request may be trusted with (the body token removed), or 401."""
        try:
            header = one_signature_header(request.headers.getlist(SIGNATURE_HEADER))
        except ValueError as several:
            self._auth_failed(client, str(several))
        mode = self._resolved.auth
        if header is not None or mode == "signature":
            problem = any_signature_problem(
                header, body, self._secrets, self._clock(), self._config.max_clock_skew_s
            )
            if problem is not None:
                self._auth_failed(client, problem)
            return payload
        token = None
        if mode == "body_token" and isinstance(payload, dict) and request.method == "POST":
            token = payload.pop(self._config.token_field, None)
        if token is None:
            token = request.query_params.get("token")
        if not isinstance(token, str) or not self._token_matches(token):
            where = (
                f"the body's {self._config.token_field!r} field"
                if mode == "body_token"
                else "?token="
            )
            self._auth_failed(client, f"missing or wrong token in {where}")
        return payload

    def _token_matches(self, token: str) -> bool:
        assert self._token is not None
        if not is_unicode(token):  # a lone surrogate (JSON may escape one) is no token
            return False
        return hmac.compare_digest(token.encode(), self._token.get_secret_value().encode())

    def _auth_failed(self, client: str, reason: str) -> NoReturn:
        """401, counted towards the address's lockout; 429 while it is locked out."""
        locked = self._lockout.wait_s(client)
        if locked:
            raise _Refused(
                429,
                "locked_out",
                "too many failed authentications from this address; wait and sign correctly",
                retry_after=locked,
            )
        if self._lockout.failed(client):
            logger.warning(
                "{client} locked out of {path} for {s:g} s after failed authentications",
                client=client,
                path=self.path,
                s=self._config.lockout_s,
            )
        raise _Refused(401, "unauthorized", reason)

    # answers ----------------------------------------------------------------------------------

    def _refuse(self, refused: _Refused, client: str) -> JSONResponse:
        metrics.SIGNAL_REJECTIONS.labels(self.source, refused.kind).inc()
        if self._worth_journaling(refused, client):
            self._on_reject(refused.kind, refused.detail, client)
        retry_after = refused.extra.pop("retry_after", None)
        answer = _answer(
            refused.status, refused.kind.replace("_", " "), refused.detail, **refused.extra
        )
        if retry_after is not None:
            answer.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        return answer

    def _worth_journaling(self, refused: _Refused, client: str) -> bool:
        """Everything but a flood: the refusals of `_FLOOD_KINDS` once a minute per address,
        so a sender that keeps on cannot grow the journal at its own pace."""
        return refused.kind not in _FLOOD_KINDS or self._floods.first_in_a_while(client)

    def _client(self, request: Request) -> str:
        """The client's address: the peer, or behind a trusted proxy the last untrusted
        address it forwarded for."""
        peer = request.client.host if request.client else ""
        forwarded = request.headers.get("x-forwarded-for")
        if not forwarded or not self._proxies or not _within(peer, self._proxies):
            return peer
        for hop in reversed([part.strip() for part in forwarded.split(",")]):
            if not _within(hop, self._proxies):
                return hop if _is_address(hop) else peer
        return peer


def _within(
    address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _answer(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)
