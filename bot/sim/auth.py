"""Bybit V5 request authentication: API key, HMAC-SHA256 signature, time window, expiry, IP.

The checks run in the order the simulator documents (10003, 10004, 10002, 33004, 10010), so a
client sees the same first failure for the same mistake every time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence

from bot.sim.config import SimAccountSpec
from bot.sim.errors import RetCode, SimError
from bot.sim.exchange import SimExchange

__all__ = [
    "DEFAULT_RECV_WINDOW_MS",
    "FUTURE_TOLERANCE_MS",
    "authenticate",
    "check_key_use",
    "check_time_window",
    "ip_allowed",
    "sign",
]

#: recv_window Bybit assumes when X-BAPI-RECV-WINDOW is absent.
DEFAULT_RECV_WINDOW_MS = 5000
#: How far ahead of the server clock a request timestamp may be.
FUTURE_TOLERANCE_MS = 1000


def sign(secret: str, timestamp: str, api_key: str, recv_window: str, payload: bytes) -> str:
    """X-BAPI-SIGN as Bybit defines it: hex HMAC-SHA256 of timestamp+key+recv_window+payload."""
    message = f"{timestamp}{api_key}{recv_window}".encode() + payload
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def authenticate(
    exchange: SimExchange,
    headers: Mapping[str, str],
    payloads: Sequence[bytes],
    client_host: str | None,
) -> str:
    """Check a private request and return its API key, or raise SimError with Bybit's code.

    `payloads` are the forms of the signed payload a correct client may have signed (for a
    GET: the raw query string, then its URL-unquoted form; for a POST: the body).
    """
    api_key = headers.get("x-bapi-api-key", "")
    spec = exchange.account_spec(api_key) if api_key else None
    if spec is None:
        raise SimError(RetCode.INVALID_API_KEY, "API key is invalid.")

    timestamp = headers.get("x-bapi-timestamp", "")
    recv_window_text = headers.get("x-bapi-recv-window", "")
    provided = headers.get("x-bapi-sign", "").encode("latin-1")
    secret = spec.api_secret.get_secret_value()
    # Every candidate is compared, so timing does not reveal which form matched.
    matches = [
        hmac.compare_digest(
            sign(secret, timestamp, api_key, recv_window_text, payload).encode(), provided
        )
        for payload in payloads
    ]
    if not any(matches):
        raise SimError(
            RetCode.INVALID_SIGN, "Error sign, please check your signature generation algorithm."
        )

    server_ms = check_time_window(exchange, timestamp, recv_window_text)
    check_key_use(spec, server_ms, client_host)
    return api_key


def check_key_use(spec: SimAccountSpec, server_ms: int, client_host: str | None) -> None:
    """Raise SimError if the key has expired by `server_ms`, or is bound to other IPs."""
    if spec.expired_at is not None and spec.expired_at.timestamp() * 1000 <= server_ms:
        raise SimError(RetCode.API_KEY_EXPIRED, "Your api key has expired.")
    if not ip_allowed(client_host, spec.ips):
        raise SimError(
            RetCode.UNMATCHED_IP,
            "Unmatched IP, please check your API key's bound IP addresses.",
        )


def check_time_window(exchange: SimExchange, timestamp: str, recv_window_text: str) -> int:
    """Raise SimError unless a request's X-BAPI-TIMESTAMP lies in its receive window
    (X-BAPI-RECV-WINDOW, or Bybit's default) of the server's clock; the server's time."""
    try:
        recv_window = int(recv_window_text) if recv_window_text else DEFAULT_RECV_WINDOW_MS
    except ValueError:
        recv_window = 0
    if recv_window <= 0:
        raise SimError(
            RetCode.PARAMS_ERROR,
            "params error: X-BAPI-RECV-WINDOW must be a positive integer (ms)",
        )
    server_ms = exchange.signing_clock_ms()  # what clients sign on, even under a replay
    try:
        request_ms = int(timestamp)
    except ValueError:
        request_ms = None
    if request_ms is None or not (
        server_ms - recv_window <= request_ms < server_ms + FUTURE_TOLERANCE_MS
    ):
        raise SimError(
            RetCode.TIMESTAMP_OUT_OF_WINDOW,
            "invalid request, please check your server timestamp or recv_window param. "
            f"req_timestamp[{timestamp[:32]}],server_timestamp[{server_ms}],"
            f"recv_window[{recv_window}]",
        )
    return server_ms


def ip_allowed(client_host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a key bound to the addresses `allowed` ("*": any) may be used from the host."""
    if "*" in allowed:
        return True
    if client_host is None:
        return False
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(entry, strict=False) for entry in allowed)
