"""The VoiceOfChain webhook: `POST /webhooks/voiceofchain`, signed with HMAC-SHA256.

Checks run cheapest-first and an unauthenticated sender learns nothing about validation:
  429 rate limit → 413 body size → 401 signature → 400 JSON → 422 signal fields
  → journal → 202 accepted | 200 duplicate

Signature (header `X-Signature: t=<unix seconds>,v1=<hex>`): HMAC-SHA256 with the source's
secret over `"<t>." + raw body`, compared in constant time; `t` must be within
`max_clock_skew_s` of now. Several `v1=` entries are allowed, so a sender can sign with an old
and a new secret while rotating.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from loguru import logger
from pydantic import SecretStr

from bot.messages import SignalError, parse_signal
from signals.base import SignalSink
from signals.config import WebhookSourceConfig

__all__ = ["SIGNATURE_HEADER", "WebhookReceiver", "sign", "signature_problem"]

SIGNATURE_HEADER: Final = "X-Signature"
_UNIX_SECONDS: Final = re.compile(r"[0-9]{1,12}")
_HEX_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Signature` header value a sender puts on `body` (used by `bot signal send`)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class _ClientRateLimit:
    """A token bucket per client address: `rate_per_s` on average, `burst` at once.

    Per client, so a flood of unsigned requests from one address cannot crowd out the real
    sender. At most `max_clients` buckets are kept; the least recently seen goes first.
    """

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float], max_clients: int = 4096
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, updated

    def allow(self, client: str) -> bool:
        now = self._clock()
        tokens, updated = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - updated) * self._rate)
        allowed = tokens >= 1
        self._buckets[client] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return allowed


class _Unauthorized(Exception):
    """The request is not signed by the source's secret; the message says how it is not."""


class WebhookReceiver:
    """Receives one source's signed signals over HTTP and hands them to the bot's sink."""

    def __init__(
        self,
        source: str,
        secret: SecretStr,
        config: WebhookSourceConfig,
        sink: SignalSink,
        *,
        token: SecretStr | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`token` is the source's query-string token, required with `allow_query_token`;
        it is a secret of its own, so the HMAC secret never travels in a URL."""
        if config.allow_query_token and token is None:
            raise ValueError(f"{source}: allow_query_token needs the source's token")
        self.source = source
        self._secret = secret
        self._token = token
        self._config = config
        self._sink = sink
        self._clock = clock
        self._rate_limit = _ClientRateLimit(config.requests_per_s, config.burst, time.monotonic)

    @property
    def path(self) -> str:
        return f"/webhooks/{self.source}"

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route(
            self.path,
            self.receive,
            methods=["POST"],
            status_code=202,
            summary=f"Receive a signed {self.source} signal",
            responses={
                200: {"description": "duplicate: already received, nothing new happens"},
                400: {"description": "body is not JSON"},
                401: {"description": "bad or missing signature"},
                413: {"description": "body too large"},
                422: {"description": "invalid signal; the body names each field"},
                429: {"description": "too many requests"},
                503: {"description": "could not be journaled: retry"},
            },
        )
        return router

    async def receive(self, request: Request) -> JSONResponse:
        if not self._rate_limit.allow(request.client.host if request.client else ""):
            return _answer(429, "too many requests", "slow down and retry after a second")
        body = await self._read_body(request)
        if body is None:
            return _answer(
                413, "body too large", f"a signal is at most {self._config.max_body_bytes} bytes"
            )
        try:
            self._authenticate(request, body)
        except _Unauthorized as exc:
            return _answer(401, "unauthorized", str(exc))
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return _answer(400, "invalid JSON", f"the body is not a JSON document: {exc}")
        try:
            signal = parse_signal(self.source, payload)
        except SignalError as exc:
            return _answer(
                422,
                "invalid signal",
                str(exc),
                problems=[{"field": field, "reason": reason} for field, reason in exc.problems],
            )
        try:
            is_new = await self._sink(signal)
        except Exception:  # the sender must retry, not believe the signal was stored
            logger.exception("could not journal signal {id}", id=signal.id)
            return _answer(503, "not stored", "the signal could not be journaled; retry later")
        if is_new:
            return JSONResponse({"status": "accepted", "id": signal.id}, status_code=202)
        return JSONResponse({"status": "duplicate", "id": signal.id}, status_code=200)

    async def _read_body(self, request: Request) -> bytes | None:
        """The raw body, or None as soon as it exceeds the limit (never read it all)."""
        limit = self._config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    def _authenticate(self, request: Request, body: bytes) -> None:
        header = request.headers.get(SIGNATURE_HEADER)
        token = request.query_params.get("token")
        if header is None and token is not None and self._token is not None:
            if not hmac.compare_digest(token.encode(), self._token.get_secret_value().encode()):
                raise _Unauthorized("the token does not match")
            return
        problem = signature_problem(
            header, body, self._secret, self._clock(), self._config.max_clock_skew_s
        )
        if problem is not None:
            raise _Unauthorized(problem)


def signature_problem(
    header: str | None, body: bytes, secret: SecretStr, now: float, max_skew_s: float
) -> str | None:
    """Why an `X-Signature` header does not authenticate `body` under `secret`, or None.

    The one check of every signed route: HMAC-SHA256 over "<t>." + body, compared in constant
    time, with `t` within `max_skew_s` of `now`; several `v1=` values are accepted.
    """
    if header is None:
        return f"missing {SIGNATURE_HEADER} header (t=<unix seconds>,v1=<hex>)"
    try:
        timestamp, candidates = _parse_signature(header)
    except _Unauthorized as exc:
        return str(exc)
    skew = abs(now - timestamp)
    if skew > max_skew_s:
        return (
            f"signature timestamp is {skew:.0f} s from the server's clock "
            f"(limit {max_skew_s} s); sign with the current time"
        )
    expected = sign(secret.get_secret_value(), body, timestamp).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        return "signature does not match the body and the secret"
    return None


def _parse_signature(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        # ASCII only: str.isdigit() accepts "²" and compare_digest refuses non-ASCII text.
        if name == "t" and _UNIX_SECONDS.fullmatch(value):
            timestamp = int(value)
        elif name == "v1" and _HEX_DIGEST.fullmatch(value.lower()):
            candidates.append(value.lower())
    if timestamp is None or not candidates:
        raise _Unauthorized(
            f"malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex>"
        )
    return timestamp, candidates


def _answer(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)
