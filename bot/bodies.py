"""Reading a request's body as it arrives: bounded in size and in time, and a sender that
hangs up half-way refused like any bad request (never a traceback in the log).

Starlette's `request.body()` would read whatever is sent, however large and however slowly,
and raise `ClientDisconnect` from deep inside when the connection closes early.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

__all__ = ["BodyRefused", "read_body"]


class BodyRefused(Exception):
    """A body not read whole: the answer's `status`, `kind` and `detail`."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


async def read_body(request: Request, limit: int, timeout_s: float, what: str) -> bytes:
    """The raw body of `what` (e.g. "a signal"); `BodyRefused` as soon as it is declared or
    grows over `limit` bytes (413), is not whole within `timeout_s` (408), or the sender
    hangs up first (400). Refused too, before it is read: a request that asks to upgrade
    the connection (HTTP/2 over plain HTTP, as `curl --http2` asks; the server would hand the
    application an empty body) and a transfer coding other than chunked, which nothing here
    decodes; and after it, a body of another length than its Content-Length says."""
    problem = _framing_problem(request)
    if problem is not None:
        raise problem
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyRefused(413, "too_large", f"{what} is at most {limit} bytes")
    body = bytearray()
    try:
        # A timeout scope, not `wait_for`: no task of its own (and no extra turns of the
        # event loop) for every request.
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise BodyRefused(413, "too_large", f"{what} is at most {limit} bytes")
    except TimeoutError:
        raise BodyRefused(408, "timeout", f"the body was not sent within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise BodyRefused(
            400,
            "incomplete",
            f"the connection closed after {len(body)} bytes of the body; send it again",
        ) from None
    if declared.isdigit() and len(body) != int(declared):
        raise BodyRefused(
            400,
            "incomplete",
            f"{len(body)} bytes of the body arrived, not the {declared} its Content-Length "
            "says; send it again",
        )
    return bytes(body)


def _framing_problem(request: Request) -> BodyRefused | None:
    """Why the request's body cannot be read as sent, if it cannot."""
    headers = request.headers
    if "upgrade" in headers:
        return BodyRefused(
            400,
            "upgrade_refused",
            f"the connection cannot be upgraded (Upgrade: {headers['upgrade'][:40]}): send "
            "plain HTTP/1.1 (with curl: --http1.1, not --http2, on an http:// address)",
        )
    coding = headers.get("transfer-encoding", "").strip().lower()
    if coding not in ("", "chunked"):
        return BodyRefused(
            501,
            "unsupported_encoding",
            f"Transfer-Encoding {coding[:40]!r} is not supported: send the body plain, or "
            "chunked alone",
        )
    return None
