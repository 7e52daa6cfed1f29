"""The `bot` command's entry point, light enough to act before anything heavy is imported.

`bot run` takes SIGHUP to mean "look at the key secrets now" once its handler is in place;
before that, SIGHUP's default action would end it, and importing the bot alone takes most of
a second. So `bot run` ignores SIGHUP from its first instant (a key rotated with `kill -HUP`
while the bot restarts is then read at start-up, as every secret is).
"""

from __future__ import annotations

import signal
import sys

__all__ = ["main"]


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from bot.cli import main as cli_main

    cli_main()
