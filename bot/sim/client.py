"""pybit's own WebSocket client pointed at the simulator, for tests and benchmarks.

Only the URL differs from stock pybit (whose URL template names Bybit's hosts), plus two
guards for loopback speed: pybit records a subscription after sending it, so its answer can
arrive first and fail the look-up; and pybit waits for a socket to close without a bound.
The bot itself uses its own client (`bot.venue.stream`).
"""

from __future__ import annotations

import time
from typing import Any, Final

from pybit.unified_trading import WebSocket

from bot.venue.stream import exit_bounded

__all__ = ["SimWebSocket"]

_RECORD_WAIT_S: Final = 1.0
_CLOSE_WAIT_S: Final = 2.0


class SimWebSocket(WebSocket):  # type: ignore[misc]  # pybit ships no type hints
    """`pybit.unified_trading.WebSocket` connecting to `sim_url` (e.g. ws://host:port/v5/private)."""

    def __init__(self, sim_url: str, **kwargs: Any) -> None:
        self._sim_url = sim_url
        super().__init__(**kwargs)

    def _connect(self, url: str) -> None:
        super()._connect(self._sim_url)

    def _process_subscription_message(self, message: dict[str, Any]) -> None:
        deadline = time.monotonic() + _RECORD_WAIT_S
        while message.get("req_id") not in self.subscriptions and time.monotonic() < deadline:
            time.sleep(0.001)
        super()._process_subscription_message(message)

    def exit(self) -> None:
        exit_bounded(self, _CLOSE_WAIT_S)
