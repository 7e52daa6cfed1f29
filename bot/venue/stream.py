"""Bybit's private WebSocket through pybit: where an order's fate is confirmed.

One `AccountStream` per key subscribes to `order`, `execution`, `position` and `wallet` with
pybit's `unified_trading.WebSocket`, turns every message into typed messages and hands them to
the event loop (pybit runs its own threads: messages cross with `call_soon_threadsafe`, the
loop never waits on a socket). The key's environment alone decides the URL: Bybit's mainnet,
testnet or demo stream, or the simulator's `/v5/private` in `sim`.

The stream is supervised here, not by pybit: on every connect the caller closes the gap
(`on_connected`, a REST reconciliation of what may have been missed); on a drop it reconnects
with bounded, jittered backoff, logging each attempt. While it is down the REST
reconciliation loop keeps working, so a dropped stream degrades, never goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import websocket
from prometheus_client import Counter, Gauge
from pybit.unified_trading import WebSocket
from pydantic import SecretStr

from bot import metrics
from bot.audit import RequestObserver, VenueRequest, notify
from bot.config import Environment
from bot.logs import logger
from bot.messages import Execution, ExitOrder, OrderEvent, PositionUpdate, WalletUpdate
from bot.secrets import ApiCredentials
from bot.venue.base import venue_urls
from bot.venue.errors import AmbiguousError
from bot.venue.shapes import (
    POSITION_EXEC_TYPES,
    execution,
    exit_order,
    is_exit_order,
    order_event,
    position_update,
    wallet_update,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "TOPICS",
    "AccountStream",
    "StreamMessage",
    "SupervisedSocket",
    "SupervisedStream",
    "parse_stream_message",
]

StreamMessage = OrderEvent | ExitOrder | Execution | PositionUpdate | WalletUpdate
TOPICS: Final = ("order", "execution", "position", "wallet")
_BACKOFF_BASE_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0
_AUTH_EXPIRY_S: Final = 10
#: Longest wait for the connection, the handshake and the authentication answer.
CONNECT_TIMEOUT_S: Final = 10.0
_CLOSE_TIMEOUT_S: Final = 2.0
#: A connection that lasted this long was healthy: the next drop starts the backoff anew.
_STABLE_S: Final = 10.0


def parse_stream_message(message: dict[str, Any], key_name: str) -> list[StreamMessage]:
    """The typed messages in one private-stream push (empty for anything else)."""
    topic, rows = message.get("topic"), message.get("data")
    if not isinstance(rows, list):
        return []
    parsed: list[StreamMessage] = []
    for row in rows:
        if not isinstance(row, dict) or row.get("category", "linear") != "linear":
            continue
        if topic == "order":
            parsed.append(exit_order(row, key_name) if is_exit_order(row) else order_event(row))
        elif topic == "execution" and row.get("execType", "Trade") in POSITION_EXEC_TYPES:
            parsed.append(execution(row, key_name))
        elif topic == "position" and int(row.get("positionIdx") or 0) == 0:
            parsed.append(position_update(row, key_name))
        elif topic == "wallet" and row.get("accountType", "UNIFIED") == "UNIFIED":
            parsed.append(wallet_update(row, key_name, message.get("creationTime") or ""))
    return parsed


def exit_bounded(socket: WebSocket, timeout_s: float) -> None:
    """Close a pybit WebSocket, waiting at most `timeout_s` (pybit's own wait has no bound)."""
    socket.exited = True
    socket._stop_custom_ping_timer()
    if not hasattr(socket, "ws"):
        return
    socket.ws.close()
    deadline = time.monotonic() + timeout_s
    while socket.ws.sock and time.monotonic() < deadline:
        time.sleep(0.01)


class SupervisedSocket(WebSocket):  # type: ignore[misc]  # pybit ships no type hints
    """pybit's WebSocket at the URL we choose, its reconnection left to our supervisor
    (`on_closed` tells it of the end of the connection), and an exit with a bound."""

    kind = "stream"  # names it in the log

    def __init__(self, *, url: str, on_closed: Callable[[], None], **kwargs: Any) -> None:
        # Set before pybit's __init__, which connects (and may call back) at once.
        self._url_override = url
        self._on_closed_callback = on_closed
        super().__init__(
            restart_on_error=False,
            # pybit counts down before it checks: 1 would fail even a connection that worked.
            retries=2,
            **kwargs,
        )

    def _connect(self, url: str) -> None:
        # pybit formats its URL template; a plain URL survives it unchanged.
        super()._connect(self._url_override)

    def exit(self) -> None:
        exit_bounded(self, _CLOSE_TIMEOUT_S)

    def _on_close(self) -> None:
        super()._on_close()
        self._on_closed_callback()

    def _send_custom_ping(self) -> None:
        # pybit's, on a timer thread of its own, catches only a closed socket: one the venue
        # closed under it (a broken pipe, a reset: after the process was stopped a while)
        # raised out of that thread, an "uncaught" CRITICAL with its traceback for a drop
        # the supervisor hears of and reconnects from anyway.
        try:
            super()._send_custom_ping()
        except (OSError, websocket.WebSocketException) as exc:
            logger.debug("{kind} ping not sent: {error}", kind=self.kind, error=repr(exc))

    def _on_error(self, error: Exception) -> None:
        # The venue's words (a refused auth says why); no secret is ever in them.
        logger.warning(
            "{kind} error: {what}: {error}",
            kind=self.kind,
            what=type(error).__name__,
            error=str(error),
        )
        self.exited = True
        self._on_closed_callback()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self._url_override!r})"


class _PrivateSocket(SupervisedSocket):
    """The private WebSocket of one key, the secret held as SecretStr."""

    kind = "account stream"

    def __init__(
        self,
        *,
        url: str,
        api_key: SecretStr,
        api_secret: SecretStr,
        on_closed: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        self._key = api_key
        self._secret = api_secret
        #: (wall time, perf counter) when the auth request was sent, and (accepted, perf
        #: counter) when its answer came: the stream's signed request, for the audit log
        self.auth_sent: tuple[float, float] | None = None
        self.auth_answer: tuple[bool, float] | None = None
        super().__init__(
            url=url,
            on_closed=on_closed,
            channel_type="private",
            api_key="<held-as-SecretStr>",
            api_secret="<held-as-SecretStr>",  # noqa: S106
            private_auth_expire=_AUTH_EXPIRY_S,
            **kwargs,
        )

    def _auth(self) -> None:
        expires = int(time.time() * 1000) + _AUTH_EXPIRY_S * 1000
        secret = self._secret.get_secret_value().encode()
        signature = hmac.new(secret, f"GET/realtime{expires}".encode(), hashlib.sha256)
        key = self._key.get_secret_value()
        self.auth_sent = (time.time(), time.perf_counter())
        self.ws.send(json.dumps({"op": "auth", "args": [key, expires, signature.hexdigest()]}))

    def _process_auth_message(self, message: dict[str, Any]) -> None:
        self.auth_answer = (message.get("success") is True, time.perf_counter())
        super()._process_auth_message(message)

    def subscribe_all(self, topics: tuple[str, ...], callback: Callable[[Any], None]) -> None:
        """Subscribe to `topics` with one request, the callbacks registered first.

        pybit's own `subscribe` sends first and registers after: on a fast link the answer
        or the first push can arrive in between and fail its look-up.
        """
        req_id = str(uuid.uuid4())
        message = json.dumps({"op": "subscribe", "req_id": req_id, "args": list(topics)})
        self.subscriptions[req_id] = message
        for topic in topics:
            self._set_callback(topic, callback)
        self.ws.send(message)


class _Inbox:
    """Messages handed from pybit's thread to the event loop, in order, with one wake-up of
    the loop for all that arrive before it takes them (a fill comes as four or five
    messages), not one per message."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._waiting: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()  # touched on the loop only

    def put(self, message: dict[str, Any]) -> None:
        """On pybit's thread."""
        with self._lock:
            self._waiting.append(message)
            if len(self._waiting) > 1:
                return  # the first one's wake-up has not been served yet: it takes this too
        with contextlib.suppress(RuntimeError):  # the loop closed: we are shutting down
            self._loop.call_soon_threadsafe(self._arrived.set)

    async def take(self) -> list[dict[str, Any]]:
        """Every message arrived since the last take (waiting for one if none has)."""
        await self._arrived.wait()
        self._arrived.clear()
        with self._lock:
            taken, self._waiting = self._waiting, []
        return taken


class SupervisedStream(ABC):
    """A pybit WebSocket kept connected until cancelled: connect (on a thread), serve it
    until it drops, then reconnect with bounded, jittered backoff, logging each attempt.

    A subclass opens its socket (`_open`, blocking), says what a new connection needs before
    it counts as live (`_serve`) and what to undo when it ends (`_dropped`), and names itself
    for the log (`label`).
    """

    label: str  # e.g. "account stream of key k", for the log

    def __init__(
        self,
        name: str,
        live: Gauge,
        reconnects: Counter,
        rng: random.Random | None = None,
    ) -> None:
        """`live` and `reconnects`: this stream's metrics (their labelled series)."""
        self.name = name
        self._live_metric = live
        self._reconnects_metric = reconnects
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self.live = False
        #: since when (monotonic) the stream has not been live: from the start until it is
        self._down_since: float | None = time.monotonic()
        self.connects = 0
        self._closed: asyncio.Event | None = None  # set to drop the current connection
        # Set once the first connection is live or has failed (`first_attempt`).
        self._attempted = asyncio.Event()

    @abstractmethod
    def _open(self, loop: asyncio.AbstractEventLoop, on_closed: Callable[[], None]) -> Any:
        """Connect and subscribe (blocking: run in a thread); `on_closed` is for pybit's
        thread to call when the connection ends. Returns the socket (with `exit()`)."""

    @abstractmethod
    async def _serve(self) -> None:
        """What a new connection needs before it counts as live."""

    @abstractmethod
    def _dropped(self) -> None:
        """A connection ended (on the loop)."""

    def drop(self) -> None:
        """Drop the current connection (it reconnects as after any drop)."""
        if self._closed is not None:
            self._closed.set()

    async def run(self) -> None:
        """Connect and serve; reconnect with backoff after a drop."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            closed = self._closed = asyncio.Event()

            def on_closed(closed: asyncio.Event = closed) -> None:  # on pybit's thread
                with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                    loop.call_soon_threadsafe(closed.set)

            try:
                socket = await asyncio.to_thread(self._open, loop, on_closed)
            except Exception as exc:  # any failure to connect is retried, with a bound
                self._attempted.set()
                failures += 1
                wait = self._backoff(failures)
                logger.bind(notify="stream").warning(
                    "{what} could not connect ({error}); attempt {n}, next in {wait:.1f} s",
                    what=self.label,
                    error=type(exc).__name__,
                    n=failures,
                    wait=wait,
                )
                await asyncio.sleep(wait)
                continue
            self.connects += 1
            connected_at = loop.time()
            try:
                await self._serve()
                self.live = True
                self._live_metric.set(1)
                self._down_since = None
                self._attempted.set()
                logger.info("{what} is live", what=self.label)
                await closed.wait()
            except Exception:  # a failed start is retried with a new connection
                logger.exception("starting the {what} failed", what=self.label)
            finally:
                self._attempted.set()
                self.live = False
                self._live_metric.set(0)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._dropped()
                await asyncio.to_thread(socket.exit)
            # A connection that did not last (refused auth, a flapping link) backs off too.
            failures = failures + 1 if loop.time() - connected_at < _STABLE_S else 1
            wait = self._backoff(failures)
            self._reconnects_metric.inc()
            logger.bind(notify="stream").warning(
                "{what} dropped; reconnecting in {wait:.1f} s", what=self.label, wait=wait
            )
            await asyncio.sleep(wait)

    async def first_attempt(self) -> None:
        """Return once the stream's first connection is live (what `_serve` needs done, done)
        or has failed; at once after that."""
        await self._attempted.wait()

    def down_for(self) -> float:
        """Seconds the stream has not been live (0 while it is)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def _backoff(self, failures: int) -> float:
        base = min(_BACKOFF_BASE_S * 2.0 ** (failures - 1), _BACKOFF_MAX_S)
        return base + self._rng.uniform(0.0, base / 4)


class AccountStream(SupervisedStream):
    """The private stream of one key: each connection closes the gap (what may have been
    missed while down) before it counts as live, then relays its messages to `on_message`."""

    def __init__(
        self,
        credentials: ApiCredentials,
        environment: Environment,
        on_message: Callable[[StreamMessage], Awaitable[None]],
        on_connected: Callable[[], Awaitable[object]],
        *,
        sim_url: str = "",
        rng: random.Random | None = None,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        """`observers` are told of each authentication (a signed request, `ws:auth`)."""
        name = credentials.name
        super().__init__(
            name, metrics.STREAM_LIVE.labels(name), metrics.STREAM_RECONNECTS.labels(name), rng
        )
        _, self.url = venue_urls(environment, sim_url)  # the key's environment alone decides
        self.label = f"account stream of key {self.name}"
        self.environment = environment
        self._observers = tuple(observers)
        self._credentials = credentials
        self._on_message = on_message
        self._on_connected = on_connected
        self._inbox: _Inbox | None = None  # the current connection's
        self._relay_task: asyncio.Task[None] | None = None

    def rotate(self, credentials: ApiCredentials) -> None:
        """Reconnect with `credentials` (a new key of the same account); the gap is closed on
        the new connection as after any drop."""
        if credentials.name != self.name:
            raise ValueError(f"credentials of key {credentials.name} given to key {self.name}")
        self._credentials = credentials
        self.drop()

    async def _serve(self) -> None:
        # The stream's messages wait in the inbox while the gap is closed by REST, then
        # flow: a fill made since the reconnect is booked after the older ones the gap-fill
        # fetches, so that each strategy's book sees its fills in the venue's order (a stop
        # fill booked after the next entry would hide the close it made). Until then
        # readers use REST.
        assert self._inbox is not None
        await self._on_connected()
        self._relay_task = asyncio.create_task(self._relay(self._inbox))

    def _dropped(self) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            self._relay_task = None

    def _open(
        self, loop: asyncio.AbstractEventLoop, on_closed: Callable[[], None]
    ) -> _PrivateSocket:
        """Connect, authenticate and subscribe (blocking: run in a thread)."""
        inbox = self._inbox = _Inbox(loop)
        # pybit sets no timeout: a peer that accepts TCP but never answers would hang it.
        websocket.setdefaulttimeout(CONNECT_TIMEOUT_S)

        socket = _PrivateSocket(
            url=self.url,
            api_key=self._credentials.api_key,
            api_secret=self._credentials.api_secret,
            on_closed=on_closed,
            testnet=False,  # pybit's URL table is not used: `url` above is the one
        )
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not socket.auth and not socket.exited and time.monotonic() < deadline:
            time.sleep(0.005)
        self._observe_auth(socket)
        if not socket.auth:
            socket.exit()
            raise ConnectionError("the venue did not confirm the stream's authentication")
        socket.subscribe_all(TOPICS, inbox.put)
        return socket

    def _observe_auth(self, socket: _PrivateSocket) -> None:
        """Tell the observers of the stream's authentication: accepted (retCode 0), refused,
        or no answer in time."""
        if socket.auth_sent is None:
            return  # never connected: nothing was signed
        at, started = socket.auth_sent
        accepted, answered_at = socket.auth_answer or (False, time.perf_counter())
        refusal = None if accepted else "refused" if socket.auth_answer else "no answer"
        record = VenueRequest(
            at=at,
            key=self.name,
            environment=self.environment.value,
            endpoint="ws:auth",
            method="WS",
            order_link_id=None,
            ret_code=0 if accepted else None,
            http_status=None,
            error=refusal,
            latency_ms=(answered_at - started) * 1000,
        )
        notify(self._observers, record)

    async def _relay(self, inbox: _Inbox) -> None:
        while True:
            for message in await inbox.take():
                await self._apply(message)

    async def _apply(self, message: dict[str, Any]) -> None:
        try:
            parsed = parse_stream_message(message, self.name)
        except (AmbiguousError, ValueError) as exc:
            logger.warning("unreadable stream message skipped: {error}", error=str(exc))
            return
        for item in parsed:
            try:
                await self._on_message(item)
            except Exception:  # one bad message must not stop the stream
                logger.exception("stream message could not be applied")
