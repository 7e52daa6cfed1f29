"""The `bot` command's entry point, light enough to act before anything heavy is imported.

`bot run` takes SIGHUP to mean "look at the key secrets now" once its handler is in place;
before that, SIGHUP's default action would end it, and importing the bot alone takes most of
a second. So `bot run` ignores SIGHUP from its first instant (a key rotated with `kill -HUP`
while the bot restarts is then read at start-up, as every secret is). Ctrl-C, even while
the modules load, ends any command with 130 (the shell's 128 + SIGINT), never a traceback.

A standard stream started closed (`bot run >&- 2>&-`) is opened on /dev/null first: else
the next file or socket opened takes its descriptor (libuv aborts on closing a socket on 1
or 2, and whatever is written to the stream lands in it), and Python leaves `sys.stderr`
None, which the logging cannot write to.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["main"]

_STREAMS = (("stdin", "r"), ("stdout", "w"), ("stderr", "w"))


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _closed_streams_on_devnull()
    try:
        from bot.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # Ctrl-C, even while the modules load: no traceback
        sys.exit(130)


def _closed_streams_on_devnull() -> None:
    """Each of the descriptors 0, 1 and 2 that is closed, opened on /dev/null (as if the
    command ran `</dev/null`, `>/dev/null` or `2>/dev/null`), and its `sys` stream with it."""
    for fd, (name, mode) in enumerate(_STREAMS):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        opened = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
        if opened != fd:  # cannot be while fd is free; never leave a stray descriptor
            os.dup2(opened, fd)
            os.close(opened)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115
