"""Last prices from Bybit's public `tickers` stream, so that no signal waits on the venue for
its price.

One `PriceStream` per environment (prices are public: no key is sent) follows the symbols
the bot has been asked about, subscribing to each one's `tickers.{symbol}` the first time it
is asked for (and to all of them again on every new connection). pybit merges Bybit's ticker
deltas into the full ticker; the last price is kept on pybit's thread, so a ticker costs the
event loop nothing.

A streamed price is only as fresh as the connection is known to be alive: `price` gives it
while the connection was heard from (any message: a ticker of any symbol, or the answer to a
ping) within the caller's bound, and None otherwise, so the caller falls back to a REST
fetch. Bybit pushes tickers every 100 ms while a market trades; a quiet market is heard from
by its pings: besides the WebSocket ping frames (every `PING_INTERVAL_S`, which drop a
connection that stops answering), a JSON ping goes out every `HEARTBEAT_S`, so a quiet but
live market keeps its streamed price within the default one-second bound instead of sending
every signal to REST (which an IP ban would also block). A symbol that has sent no ticker for
`TICKER_SILENCE_S` goes to REST all the same: a live connection does not prove the venue
still serves that one subscription.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import websocket

from bot import metrics
from bot.config import Environment
from bot.logs import logger
from bot.venue.base import public_stream_url
from bot.venue.stream import CONNECT_TIMEOUT_S, SupervisedSocket, SupervisedStream

__all__ = ["HEARTBEAT_S", "PING_INTERVAL_S", "TICKER_SILENCE_S", "PriceStream"]

#: How often the WebSocket ping frames go out; one not answered within _PONG_TIMEOUT_S drops
#: the connection.
PING_INTERVAL_S: Final = 5
_PONG_TIMEOUT_S: Final = 4
#: How often a JSON ping asks a quiet but live stream to be heard from (Bybit answers each
#: with a pong message): the longest silence of a live connection.
HEARTBEAT_S: Final = 0.4
#: A symbol with no ticker for this long is fetched by REST even on a live connection: the
#: pongs prove the connection, not that the venue still serves that symbol's subscription.
TICKER_SILENCE_S: Final = 60.0


class _PublicSocket(SupervisedSocket):
    """pybit's public linear WebSocket, telling `on_heard` of every message."""

    kind = "price stream"

    def __init__(
        self,
        *,
        url: str,
        on_closed: Callable[[], None],
        on_heard: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        self._on_heard = on_heard
        self._stopped = threading.Event()
        super().__init__(
            url=url,
            on_closed=on_closed,
            channel_type="linear",
            testnet=False,  # pybit's URL table is not used: `url` above is the one
            ping_interval=PING_INTERVAL_S,
            ping_timeout=_PONG_TIMEOUT_S,
            **kwargs,
        )

    def _on_message(self, message: str) -> None:
        self._on_heard()
        super()._on_message(message)

    def beat(self) -> None:
        """Send a JSON ping every `HEARTBEAT_S` until the socket exits or cannot send (its
        supervisor then reconnects). Blocking: run it on a thread of its own."""
        while not self._stopped.wait(HEARTBEAT_S):
            try:
                self.ws.send(self.custom_ping_message)
            except Exception as exc:  # closed under us (any of websocket-client's errors)
                logger.debug("price stream heartbeat stopped: {error}", error=repr(exc))
                return

    def exit(self) -> None:
        self._stopped.set()
        super().exit()

    def watch(self, symbols: Iterable[str], callback: Callable[[dict[str, Any]], None]) -> None:
        """Subscribe to the symbols' tickers, one request each (the venue refuses a whole
        request for one symbol it does not list), the callback registered before the request
        is sent (an answer or a first push can arrive at once)."""
        for symbol in symbols:
            topic = f"tickers.{symbol}"
            if topic in self.callback_directory:
                continue
            req_id = f"{topic}-{time.monotonic_ns()}"
            message = json.dumps({"op": "subscribe", "req_id": req_id, "args": [topic]})
            self.subscriptions[req_id] = message
            self._set_callback(topic, callback)
            self.ws.send(message)

    def _process_subscription_message(self, message: dict[str, Any]) -> None:
        # pybit's own handling of a refusal fails (it looks up the wrong key) and with it the
        # connection: a symbol the venue does not list would drop every other symbol's prices.
        if message.get("success") is not False:
            return
        request = self.subscriptions.pop(str(message.get("req_id")), None)
        topics = json.loads(request)["args"] if request else []
        for topic in topics:
            self.callback_directory.pop(topic, None)
        logger.warning(
            "the venue refused the price stream of {topics}: {why}; their prices come by REST",
            topics=", ".join(topics) or "a subscription",
            why=message.get("ret_msg"),
        )


class PriceStream(SupervisedStream):
    """The last prices of the symbols asked about, from one environment's public stream."""

    def __init__(
        self, environment: Environment, *, sim_url: str = "", rng: random.Random | None = None
    ) -> None:
        super().__init__(
            f"prices-{environment.value}",
            metrics.PRICE_STREAM_LIVE.labels(environment.value),
            metrics.PRICE_STREAM_RECONNECTS.labels(environment.value),
            rng,
        )
        self.url = public_stream_url(environment, sim_url)
        self.label = f"price stream of {environment.value}"
        self._lock = threading.Lock()  # pybit's thread writes, the event loop reads
        self._watched: set[str] = set()
        self._prices: dict[str, Decimal] = {}
        self._ticked_at: dict[str, float] = {}  # monotonic: each symbol's last ticker
        self._heard_at: float | None = None  # monotonic: last message of this connection
        self._socket: _PublicSocket | None = None

    def watch(self, symbols: Iterable[str]) -> None:
        """Follow these symbols' prices from now on: at once if connected, else as soon as
        the stream connects. Call from the event loop; returns without waiting."""
        symbols = tuple(symbols)
        if self._watched.issuperset(symbols):  # as nearly always: only this method adds
            return
        with self._lock:
            new = sorted(set(symbols) - self._watched)
            self._watched.update(new)
            socket = self._socket
        if new and socket is not None:
            loop = asyncio.get_running_loop()
            sent = loop.run_in_executor(None, socket.watch, new, self._on_ticker)
            sent.add_done_callback(_log_failed_subscription)

    def price(self, symbol: str, max_age_s: float) -> tuple[Decimal, float] | None:
        """(last price, seconds since the connection was last heard from) if the stream holds
        one for `symbol`, was heard from within `max_age_s`, and sent a ticker of `symbol`
        within `TICKER_SILENCE_S`; else None."""
        with self._lock:
            price, heard_at = self._prices.get(symbol), self._heard_at
            ticked_at = self._ticked_at.get(symbol)
        if not self.live or price is None or heard_at is None or ticked_at is None:
            return None
        now = time.monotonic()
        age_s = now - heard_at
        if age_s > max_age_s or now - ticked_at > TICKER_SILENCE_S:
            return None
        return price, age_s

    def _open(self, loop: asyncio.AbstractEventLoop, on_closed: Callable[[], None]) -> Any:
        """Connect and subscribe to every symbol watched so far (blocking: run in a thread)."""
        # pybit sets no timeout: a peer that accepts TCP but never answers would hang it.
        websocket.setdefaulttimeout(CONNECT_TIMEOUT_S)
        socket = _PublicSocket(url=self.url, on_closed=on_closed, on_heard=self._heard)
        with self._lock:
            self._socket = socket
            watched = sorted(self._watched)
        try:
            socket.watch(watched, self._on_ticker)
        except Exception:  # the connection failed as it began: the supervisor tries again
            self._dropped()
            socket.exit()
            raise
        threading.Thread(target=socket.beat, name=f"{self.name}-heartbeat", daemon=True).start()
        return socket

    async def _serve(self) -> None:
        """Live at once: each subscription answers with a snapshot of its ticker."""

    def _dropped(self) -> None:
        with self._lock:
            self._socket = None
            self._prices.clear()
            self._ticked_at.clear()
            self._heard_at = None

    def _heard(self) -> None:  # on pybit's thread
        with self._lock:
            self._heard_at = time.monotonic()

    def _on_ticker(self, message: dict[str, Any]) -> None:  # on pybit's thread
        data = message.get("data")
        if not isinstance(data, dict):
            return
        symbol, last = data.get("symbol"), data.get("lastPrice")
        try:
            price = Decimal(str(last))
        except InvalidOperation:
            return  # a ticker without a price yet: the next one has it
        if isinstance(symbol, str) and price.is_finite() and price > 0:
            with self._lock:
                self._prices[symbol] = price
                self._ticked_at[symbol] = time.monotonic()


def _log_failed_subscription(done: asyncio.Future[Any]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        logger.warning("subscribing to tickers failed: {error}", error=str(error))
