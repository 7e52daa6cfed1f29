"""The seam between signal adapters and the bot.

An adapter parses what it receives into a `bot.messages.Signal` and awaits the bot's
`SignalSink` with it. The sink returns only once the signal is durably journaled: True for a
new signal, False for a duplicate (already seen; nothing new happens). Only then may the
adapter acknowledge the sender (HTTP 202/200, MQTT PUBACK), so a crash means redelivery,
never loss.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.messages import Signal

__all__ = ["SignalSink"]

SignalSink = Callable[[Signal], Awaitable[bool]]
