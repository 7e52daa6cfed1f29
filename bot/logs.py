"""Logging through loguru: a human console by default, JSON lines with `--log-json`.

A JSON line is one compact object: `time` (ISO 8601, UTC), `level`, `message`, the record's
bound fields (`logger.bind(...)` and the message's keyword arguments) under their own names,
and `exception` (the traceback's text) when there is one; a bound field named like one of
those four is written as `extra.<name>`.

Secret values are registered with `redact()` when they are resolved, and the sink scrubs
them from the *rendered* line, after loguru has formatted everything (message, bound
context of any type, tracebacks with their chained causes), so nothing can slip past.
A value is scrubbed in every spelling a line can carry it in: as is, JSON-escaped (JSON
mode escapes the whole line; `ensure_ascii` either way), inside a `repr` (a `KeyError`, a
dict or a bytes object in a traceback or in `extra`), URL-encoded, and these escapes nested
(a `repr` inside a JSON line). The spellings are computed once, when a value is registered,
into one regular expression per secret, run only on lines holding the secret's longest
stretch that no escape changes. `diagnose=False` keeps variable values out of tracebacks.
Standard-library logging (uvicorn, pybit) is routed through the same sink, and so are
uncaught exceptions (main thread, other threads, "exception ignored") and warnings: no
traceback or warning reaches stderr unscrubbed once `configure()` has run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
import traceback
import urllib.parse
import warnings
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC
from types import TracebackType
from typing import TYPE_CHECKING, Final, TextIO

from loguru import logger

from bot.bounded import Recently, remember

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = ["REDACTED", "RepeatedNotes", "configure", "logger", "redact", "scrub", "spellings"]

REDACTED: Final = "***"
# Shorter values would redact ordinary words; real secrets are far longer.
_MIN_SECRET_LENGTH: Final = 8
# Escapes nest: a repr inside a JSON line is two levels, a JSON body in a bytes repr in a
# JSON line three.
_ESCAPE_DEPTH: Final = 3

# Characters no escape changes (JSON, repr, URL-encoding).
_INVARIANT_RUN: Final = re.compile(r"[A-Za-z0-9_.~-]+")

_secrets: dict[str, tuple[str, re.Pattern[str]]] = {}
_secrets_lock = threading.Lock()
# (anchor, pattern of every spelling) per secret, longest secret first. Replaced whole on
# registration, so `scrub`, which runs on every line, reads it without the lock.
_scrubbers: tuple[tuple[str, re.Pattern[str]], ...] = ()

_CONSOLE_FORMAT: Final = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message}"
)
#: A number written whole in a line, not the digits of a longer one (`{}`: the number).
_WHOLE_NUMBER: Final = r"(?<![\d.]){}(?!\d)"
# The JSON line's own fields, in order; a bound field of the same name is renamed.
_JSON_FIELDS: Final = ("time", "level", "message", "exception")


def _per_char(escape: Callable[[str], str]) -> Callable[[str], str]:
    return lambda text: "".join(escape(char) for char in text)


# repr escapes a quote only when the whole string holds both kinds, so a secret inside a
# longer string can be spelled with `'` bare or escaped; every other character's escape is
# independent of its neighbours.
_repr_bare = _per_char(lambda char: repr(char)[1:-1])
_ascii_bare = _per_char(lambda char: ascii(char)[1:-1])
_bytes_bare = _per_char(lambda char: repr(char.encode("utf-8", "surrogatepass"))[2:-1])

_ESCAPES: Final[tuple[Callable[[str], str], ...]] = (
    lambda text: json.dumps(text)[1:-1],
    lambda text: json.dumps(text, ensure_ascii=False)[1:-1],
    _repr_bare,
    lambda text: _repr_bare(text).replace("'", "\\'"),
    _ascii_bare,
    lambda text: _ascii_bare(text).replace("'", "\\'"),
    _bytes_bare,
    lambda text: _bytes_bare(text).replace("'", "\\'"),
)


def spellings(secret: str) -> set[str]:
    """Every form in which a log line can carry `secret`: as is, escaped (JSON, repr, bytes
    repr, up to three levels deep) and URL-encoded."""
    found = {secret}
    level = {secret}
    for _ in range(_ESCAPE_DEPTH):
        level = {escape(text) for text in level for escape in _ESCAPES} - found
        found |= level
    found |= {
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret, safe=""),
    }
    return found


def _anchor(secret: str) -> str:
    """The longest run of `secret` that every spelling holds unchanged (no escape touches
    these characters): a cheap substring test tells which lines can hold the secret."""
    return max(_INVARIANT_RUN.findall(secret), key=len, default="")


def _pattern(secret: str) -> re.Pattern[str]:
    # Longest first: where one spelling contains another, the whole of it goes.
    forms = sorted(spellings(secret), key=lambda form: (-len(form), form))
    return re.compile("|".join(map(re.escape, forms)))


def redact(secret: str) -> None:
    """Never let `secret` appear in a log line from now on, in any spelling."""
    global _scrubbers
    if len(secret) < _MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if secret in _secrets:
            return
        _secrets[secret] = (_anchor(secret), _pattern(secret))
        # Longest secret first, so a secret holding another one goes whole.
        _scrubbers = tuple(_secrets[key] for key in sorted(_secrets, key=len, reverse=True))


def scrub(text: str) -> str:
    """`text` with every spelling of every registered secret replaced by REDACTED."""
    for anchor, pattern in _scrubbers:
        if anchor in text:
            text = pattern.sub(REDACTED, text)
    return text


class _ScrubbingSink:
    """Writes each fully rendered log line to `stream` with the secrets taken out; without a
    stream, to whatever `sys.stderr` is at the time of writing (a test harness swaps it)."""

    def __init__(self, stream: TextIO | None, render: Callable[[Message], str] = str) -> None:
        self._stream = stream
        self._render = render

    def write(self, message: Message) -> None:
        stream = self._stream or sys.stderr
        text = scrub(self._render(message))
        if not text.isascii():  # a lone surrogate (a plug-in's text) no stream can encode
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        stream.write(text)
        stream.flush()


def _json_line(message: Message) -> str:
    """The record as one compact JSON line (see the module docstring); `message` itself is
    loguru's rendering of the exception alone (format "{exception}"), empty without one."""
    record = message.record
    line: dict[str, object] = {
        "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "level": record["level"].name,
        "message": record["message"],
    }
    for key, value in record["extra"].items():
        line[f"extra.{key}" if key in _JSON_FIELDS else key] = value
    exception = str(message).rstrip("\n")
    if exception:
        line["exception"] = exception
    try:
        text = json.dumps(line, default=str, ensure_ascii=False, separators=(",", ":"))
    except Exception:  # a bound value JSON cannot hold (a tuple key, a cycle, a failing str)
        # Never let the sink fail: loguru would print the raw record, unscrubbed, to stderr.
        text = json.dumps(
            {key: value if key in _JSON_FIELDS else _repr(value) for key, value in line.items()},
            ensure_ascii=False,
            separators=(",", ":"),
        )
    return text + "\n"


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _console_format(record: Record) -> str:
    """The console line, with the record's bound context (`key=value`) after the message,
    but for what the message spells out itself."""
    message = record["message"]
    context = "".join(
        f" {key}={{extra[{key}]}}"
        for key, value in record["extra"].items()
        if not _spelled_out(value, message)
    )
    return _CONSOLE_FORMAT + context + "\n{exception}"


def _spelled_out(value: object, message: str) -> bool:
    """Whether `message` shows `value`: as `str` writes it, or, for a float, rounded to a
    few decimals (the message's `{delay:.2f}` shows 0.47 of 0.4674788...). A float shown
    without a decimal point is not looked for: "3" could be any number of the line."""
    if str(value) in message:
        return True
    if not isinstance(value, float):
        return False
    forms = {f"{value:g}", *(f"{value:.{n}f}" for n in range(1, 7))}
    return any(
        re.search(_WHOLE_NUMBER.format(re.escape(form)), message) for form in forms if "." in form
    )


class _InterceptHandler(logging.Handler):
    """Sends standard-library log records (uvicorn, pybit) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


class _ConnectionEndsAsWarning(logging.Filter):
    """Passes every record; a library's ERROR for a connection's end as a WARNING (the bot
    says the end itself, as the WARNING it is: it reconnects). `said`: whether a message is
    one of the library's lines for it."""

    def __init__(self, said: Callable[[str], bool]) -> None:
        super().__init__()
        self._said = said

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and self._said(record.getMessage()):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


#: Per logger, its library's lines for a connection's end: websocket-client's (after it hands
#: the bot the reason), paho-mqtt's (under aiomqtt's "mqtt" logger) for a reset connection
#: or a broker sending what is no MQTT (a broker stopping, a proxy without its backend).
_CONNECTION_ENDS: Final[dict[str, Callable[[str], bool]]] = {
    "websocket": lambda message: message.endswith(" - goodbye"),
    "mqtt": lambda message: message.startswith(
        ("failed to receive on socket:", "Error: Unrecognised command")
    ),
}


class RepeatedNotes:
    """A note said again and again (a flood of one client's garbage, a failure that lasts):
    said once a minute per key, the next one telling how many were held back meanwhile; and
    when it is over (a failure ended), said once."""

    def __init__(
        self,
        limit: int = 1,
        clock: Callable[[], float] = time.monotonic,
        *,
        settle_s: float = 5.0,
    ) -> None:
        """`limit`: how many keys are kept (the least recently said forgotten first).
        `settle_s`: a failure is over only once this long has passed since its last note
        (writes to a nearly full disk that fail and work in turn are one lasting failure,
        not a failure and its end again and again, two lines each)."""
        self._said = Recently(60, limit, clock)
        self._held: dict[str, int] = {}  # key -> how many were held back since one was said
        self._clock = clock
        self._limit = limit
        self._settle_s = settle_s
        self._last: OrderedDict[str, float] = OrderedDict()  # key -> when last noted

    def say(self, key: str) -> str | None:
        """None if this note of `key` is held back (and counted); else it is said now, and
        this is what its line adds: how many were held back since the last one said ("" for
        none)."""
        remember(self._last, key, self._clock(), self._limit)
        if not self._said.first_in_a_while(key):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        held = self._held.pop(key, 0)
        return f" ({held} more in the last minute)" if held else ""

    def over(self, key: str) -> int | None:
        """The notes of `key` are over (the failure they tell of ended), and its next one is
        said at once: how many were held back since the last one said; None if none was said
        since they were last over (nothing to tell), or if the last note is under `settle_s`
        old (not over yet: the next note is held back as before)."""
        last = self._last.get(key)
        if last is not None and self._clock() - last < self._settle_s:
            return None
        self._last.pop(key, None)
        held = self._held.pop(key, 0)
        return held if self._said.forget(key) else None


class _OncePerMinute(logging.Filter):
    """Passes a record whose message is one of `messages` once a minute per message, the
    next one saying how many were held back: uvicorn logs "Invalid HTTP request received."
    for each malformed request, so a client sending garbage as fast as it can would fill
    the disk with it (30,000 lines in 5 s were seen). Other records pass untouched."""

    def __init__(self, *messages: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._messages = frozenset(messages)
        self._notes = RepeatedNotes(len(messages), clock)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message not in self._messages:
            return True
        more = self._notes.say(message)
        if more is None:
            return False
        if more:
            record.msg, record.args = message + more, None
        return True


def _log_uncaught(
    what: str,
    exc_type: type[BaseException],
    exc_value: BaseException | None,
    exc_traceback: TracebackType | None,
) -> None:
    """An exception nobody caught, through the scrubbing sink (never raw to stderr)."""
    try:
        logger.opt(exception=(exc_type, exc_value, exc_traceback)).critical(what)
    except Exception:  # the sink itself failed: still no unscrubbed text
        text = "".join(traceback.format_exception(exc_type, exc_value, exc_traceback))
        with contextlib.suppress(Exception):
            sys.stderr.write(scrub(f"{what}\n{text}"))


def _excepthook(
    exc_type: type[BaseException],
    exc_value: BaseException,
    exc_traceback: TracebackType | None,
) -> None:
    _log_uncaught(f"uncaught {exc_type.__name__}", exc_type, exc_value, exc_traceback)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # as the default hook: a thread's clean exit
    name = args.thread.name if args.thread is not None else "?"
    _log_uncaught(
        f"uncaught {args.exc_type.__name__} in thread {name}",
        args.exc_type,
        args.exc_value,
        args.exc_traceback,
    )


def _unraisable_hook(args: sys.UnraisableHookArgs) -> None:
    message = args.err_msg or "Exception ignored in"
    if args.object is not None:
        try:
            message = f"{message}: {args.object!r}"
        except Exception:  # as the default hook: an object without a repr is not named
            message = f"{message}: <object repr() failed>"
    _log_uncaught(message, args.exc_type, args.exc_value, args.exc_traceback)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning (a library's, a plug-in's) as a WARNING line through the scrubbing sink,
    never raw to stderr; one written to a file of its own is scrubbed there."""
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n")
    if file is not None and file is not sys.stderr:
        with contextlib.suppress(OSError, ValueError):  # as the default: a closed file
            file.write(scrub(text) + "\n")
        return
    logger.warning(text)


def configure(*, json: bool = False, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Install the one sink (on stderr unless `stream`); safe to call again."""
    logger.remove()
    if json:
        sink = _ScrubbingSink(stream, _json_line)
        logger.add(
            sink.write,
            level=level,
            format=lambda record: "{exception}",  # the rest is read from the record
            diagnose=False,
            backtrace=False,
            colorize=False,
        )
    else:
        sink = _ScrubbingSink(stream)
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
    # A connection's end is a WARNING in the libraries' lines too; their other errors (a
    # failing callback) stay errors.
    for name, said in _CONNECTION_ENDS.items():
        library_logger = logging.getLogger(name)
        if not any(isinstance(f, _ConnectionEndsAsWarning) for f in library_logger.filters):
            library_logger.addFilter(_ConnectionEndsAsWarning(said))
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _OncePerMinute) for f in uvicorn_logger.filters):
        uvicorn_logger.addFilter(_OncePerMinute("Invalid HTTP request received."))
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisable_hook
    warnings.showwarning = _show_warning
