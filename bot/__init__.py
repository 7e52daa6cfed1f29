"""bybit-signal-bot: trading signals in, Bybit V5 orders out, safely."""

__version__ = "0.1.0"
