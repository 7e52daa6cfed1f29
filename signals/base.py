"""The seam between signal adapters and the bot.

An adapter parses what it receives into a `bot.messages.Signal` and awaits the bot's
`SignalSink` with it. The sink returns only once the signal is durably journaled: True for a
new signal, False for a duplicate (already seen; nothing new happens). Only then may the
adapter acknowledge the sender (HTTP 202/200, MQTT PUBACK), so a crash means redelivery,
never loss.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

from bot.bounded import Recently
from bot.messages import Signal

__all__ = ["FLOOD_NOTE_S", "FloodNotes", "SignalSink"]

SignalSink = Callable[[Signal], Awaitable[bool]]

#: A refusal anyone could repeat is reported (logged, journaled) once per this many seconds
#: per sender (a webhook's address, an MQTT topic); the rest are only counted.
FLOOD_NOTE_S: Final = 60.0
_MAX_FLOOD_KEYS: Final = 4096


class FloodNotes(Recently):
    """Which senders had a refusal reported within `FLOOD_NOTE_S`; at most
    `_MAX_FLOOD_KEYS` are kept, the least recently reported going first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(FLOOD_NOTE_S, _MAX_FLOOD_KEYS, clock)
