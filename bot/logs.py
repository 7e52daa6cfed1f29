"""Logging through loguru: a human console by default, JSON lines with `--log-json`.

Secret values are registered with `redact()` when they are resolved, and every record is
scrubbed of them before any sink sees it. `diagnose=False` keeps variable values out of
tracebacks. Standard-library logging (uvicorn, pybit) is routed through the same pipeline.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Final

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["REDACTED", "configure", "logger", "redact"]

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


def _scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _patch(record: Record) -> None:
    record["message"] = _scrub(record["message"])
    for key, value in list(record["extra"].items()):
        if isinstance(value, str):
            record["extra"][key] = _scrub(value)
    if record["exception"] is not None:
        # loguru formats the traceback later from the exception object; scrub its text now.
        exc = record["exception"].value
        if exc is not None and _secrets and _scrub(str(exc)) != str(exc):
            record["exception"] = record["exception"]._replace(
                value=type(exc)(_scrub(str(exc))) if _rebuildable(exc) else RuntimeError(REDACTED)
            )


def _rebuildable(exc: BaseException) -> bool:
    try:
        type(exc)("")
    except Exception:  # a constructor signature we cannot call with one string
        return False
    return True


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


def configure(*, json: bool = False, level: str = "INFO") -> None:
    """Install the one sink; safe to call again (tests, CLI sub-commands)."""
    logger.remove()
    logger.configure(patcher=_patch)
    if json:
        logger.add(sys.stderr, level=level, serialize=True, diagnose=False, backtrace=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format=_console_format,
            diagnose=False,
            backtrace=False,
            colorize=None,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "pybit"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
