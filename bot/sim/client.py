"""pybit's own WebSocket clients pointed at the simulator, for tests and benchmarks: the
streams' (`SimWebSocket`) and the trade API's (`SimWebSocketTrading`).

Only the URL differs from stock pybit (whose URL template names Bybit's hosts), plus two
guards for loopback speed: pybit records a subscription after sending it, so its answer can
arrive first and fail the look-up; and pybit waits for a socket to close without a bound.
The bot itself uses its own client (`bot.venue.stream`).
"""

from __future__ import annotations

import time
from typing import Any, Final

from pybit.unified_trading import WebSocket, WebSocketTrading

from bot.venue.stream import exit_bounded

__all__ = ["SimWebSocket", "SimWebSocketTrading"]

_RECORD_WAIT_S: Final = 1.0
_CLOSE_WAIT_S: Final = 2.0


class _AtSimulator:
    """Connects to `sim_url` instead of the URL pybit builds (Bybit's hosts), and closes with
    a bound. First base of a pybit client class."""

    def __init__(self, sim_url: str, **kwargs: Any) -> None:
        self._sim_url = sim_url
        super().__init__(**kwargs)  # pybit's, which connects at once

    def _connect(self, url: str) -> None:
        super()._connect(self._sim_url)  # type: ignore[misc]  # pybit's

    def exit(self) -> None:
        exit_bounded(self, _CLOSE_WAIT_S)


class SimWebSocket(_AtSimulator, WebSocket):  # type: ignore[misc]  # pybit ships no type hints
    """`pybit.unified_trading.WebSocket` connecting to `sim_url` (e.g. ws://host:port/v5/private)."""

    def _process_subscription_message(self, message: dict[str, Any]) -> None:
        deadline = time.monotonic() + _RECORD_WAIT_S
        while message.get("req_id") not in self.subscriptions and time.monotonic() < deadline:
            time.sleep(0.001)
        super()._process_subscription_message(message)


class SimWebSocketTrading(_AtSimulator, WebSocketTrading):  # type: ignore[misc]
    """`pybit.unified_trading.WebSocketTrading` connecting to `sim_url` (ws://host:port/v5/trade).

    pybit records a request's callback only after sending the request, so on loopback the
    answer can arrive first and be dropped as unknown: the look-up waits for the record."""

    def _pop_callback(self, topic: str | None) -> tuple[Any, Any]:
        deadline = time.monotonic() + _RECORD_WAIT_S
        while topic is not None and topic not in self.callback_directory:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        return super()._pop_callback(topic)  # type: ignore[no-any-return]
