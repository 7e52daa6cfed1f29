"""Logging through loguru: a human console by default, JSON lines with `--log-json`.

Secret values are registered with `redact()` when they are resolved, and the sink scrubs
them from the *rendered* line, after loguru has formatted everything (message, bound
context of any type, tracebacks with their chained causes), so nothing can slip past.
`diagnose=False` keeps variable values out of tracebacks. Standard-library logging
(uvicorn, pybit) is routed through the same sink.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Final, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = ["REDACTED", "configure", "logger", "redact", "scrub"]

REDACTED: Final = "***"
# Shorter values would redact ordinary words; real secrets are far longer.
_MIN_SECRET_LENGTH: Final = 8

_secrets: set[str] = set()
_secrets_lock = threading.Lock()

_CONSOLE_FORMAT: Final = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message}"
)


def redact(secret: str) -> None:
    """Never let `secret` appear in a log line from now on."""
    if len(secret) >= _MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(secret)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by REDACTED."""
    with _secrets_lock:
        secrets = tuple(_secrets)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class _ScrubbingSink:
    """Writes each fully rendered log line to `stream` with the secrets taken out."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, message: Message) -> None:
        self._stream.write(scrub(str(message)))
        self._stream.flush()


def _console_format(record: Record) -> str:
    """The console line, with the record's bound context (`key=value`) after the message."""
    context = "".join(
        f" {key}={{extra[{key}]}}"
        for key, value in record["extra"].items()
        if str(value) not in record["message"]  # already spelled out by the message itself
    )
    return _CONSOLE_FORMAT + context + "\n{exception}"


class _InterceptHandler(logging.Handler):
    """Sends standard-library log records (uvicorn, pybit) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure(*, json: bool = False, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Install the one sink (on stderr unless `stream`); safe to call again."""
    logger.remove()
    sink = _ScrubbingSink(stream or sys.stderr)
    if json:
        logger.add(sink.write, level=level, serialize=True, diagnose=False, backtrace=False)
    else:
        colorize = (stream or sys.stderr).isatty()
        logger.add(
            sink.write,
            level=level,
            format=_console_format,
            diagnose=False,
            backtrace=False,
            colorize=colorize,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "pybit"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
