"""Notifications: the events an operator must hear of, sent through apprise, never in the way.

The bot already logs each such event; the log call carries its kind in its bound context
(`logger.bind(notify="fill").info(...)`, the kinds are `bot.config.NotifyEvent`). The
notifier is a loguru sink that takes only those records, so an event is told to the operator
exactly as it is logged, by the same call.

A storm sends a summary, not a message per event: per kind, the first event goes out at once
and opens a window of `[notify] min_interval_s`; the others of the window are counted, and
when it ends one summary goes out ("499 more fills in the last 60 s", with the latest few).
While the storm lasts, each window sends one summary; a quiet window closes, and the next
event goes out at once again. So at most two messages per kind and window are ever queued.

Never in the way: the sink only appends to memory under a lock, on the caller's thread; the
sends run on the notifier's own thread, each apprise call bounded by `timeout_s`. (loguru's
`enqueue=True` would pickle every record into a pipe that, once full behind a slow send,
blocks the caller; and `logger.remove` would wait for that send.) A target that is down or
slow only delays later notifications; its failures are logged once per window, never with a
URL: the URLs are secrets, registered with the log scrubber, and apprise's own logging
(which can spell a URL's parts) is silenced.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from pydantic import SecretStr

from bot import logs
from bot.config import ConfigError, NotifyConfig
from bot.logs import logger

if TYPE_CHECKING:
    import apprise
    from loguru import Message, Record

__all__ = ["NOTIFY_URLS_NAME", "Notifier", "split_urls", "start"]

#: The secret holding the apprise URLs, several separated by newlines, commas or spaces.
NOTIFY_URLS_NAME: Final = "BOT_NOTIFY_URLS"
#: How each kind is named in a summary: (one, several).
_NAMES: Final[Mapping[str, tuple[str, str]]] = {
    "fill": ("fill", "fills"),
    "rejection": ("rejection", "rejections"),
    "foreign": ("change by another client", "changes by another client"),
    "trading_state": ("trading state change", "trading state changes"),
    "key": ("key warning", "key warnings"),
    "venue_error": ("venue error", "venue errors"),
    "stream": ("account stream loss", "account stream losses"),
}
#: Events quoted in a summary (the latest ones), and the length of each quote.
_QUOTED: Final = 5
_QUOTE_CHARS: Final = 300
#: Messages waiting for the sender; only reached if sends stall for many windows.
_OUTBOX: Final = 64
#: How long shutdown waits for the last summaries to go out.
_CLOSE_WAIT_S: Final = 3.0
# A new URL starts where a scheme follows a separator (a comma inside a URL's query stays).
_URL_SEPARATOR: Final = re.compile(r"[\s,;]+(?=[A-Za-z0-9]{1,32}://)")
_SCHEME: Final = re.compile(r"^([A-Za-z0-9]{1,32})://")


def split_urls(secret: SecretStr) -> list[str]:
    """The URLs a secret holds (one per line, or separated by commas or spaces), each one
    registered with the log scrubber."""
    urls = [
        url.strip(" ,;")
        for line in secret.get_secret_value().splitlines()
        for url in _URL_SEPARATOR.split(line.strip())
        if url.strip(" ,;")
    ]
    for url in urls:
        logs.redact(url)
    return urls


@dataclass(frozen=True)
class _Note:
    """One message for the targets."""

    title: str
    body: str
    level: int


@dataclass
class _Window:
    """One kind's events since its last message went out."""

    ends_at: float = float("-inf")
    count: int = 0
    level: int = 0
    latest: deque[str] = field(default_factory=lambda: deque(maxlen=_QUOTED))


class Notifier:
    """The loguru sink and the thread that sends what it gathered."""

    def __init__(self, targets: apprise.Apprise, config: NotifyConfig, name: str) -> None:
        """`name` heads every title (the bot and its environment)."""
        self._targets = targets
        self._config = config
        self._name = name
        self._windows: dict[str, _Window] = {kind: _Window() for kind in config.events}
        self._outbox: deque[_Note] = deque(maxlen=_OUTBOX)
        self._wake = threading.Condition()
        self._closing = False
        self._failures_quiet_until = float("-inf")
        self._sink_id: int | None = None
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self) -> None:
        """Start sending, and take every tagged record of an enabled kind from now on."""
        self._thread.start()
        self._sink_id = logger.add(
            self.write,
            level=0,
            format="{message}",
            filter=lambda record: record["extra"].get("notify") in self._windows,
            catch=True,
        )

    def close(self) -> None:
        """Stop taking records; send what the open windows counted (bounded), then stop."""
        if self._sink_id is not None:
            with contextlib.suppress(ValueError):  # `logs.configure()` removed it already
                logger.remove(self._sink_id)
            self._sink_id = None
        with self._wake:
            self._closing = True
            self._close_windows(float("inf"))
            self._wake.notify()
        self._thread.join(min(_CLOSE_WAIT_S, self._config.timeout_s))
        with self._wake:
            dropped = len(self._outbox)
            self._outbox.clear()  # the thread ends with the send it is in
        if dropped:
            logger.warning(
                "{n} notification(s) not sent at shutdown: the target is too slow", n=dropped
            )

    def write(self, message: Message) -> None:
        """The sink: file the event in its kind's window (memory only: never waits on I/O)."""
        record = message.record
        kind = str(record["extra"]["notify"])
        text = _event_text(record)
        now = time.monotonic()
        with self._wake:
            window = self._windows[kind]
            self._close_windows(now)
            if now >= window.ends_at:  # the first of its window: at once
                window.ends_at = now + self._config.min_interval_s
                self._outbox.append(_Note(self._title(_NAMES[kind][0]), text, record["level"].no))
            else:
                window.count += 1
                window.level = max(window.level, record["level"].no)
                window.latest.append(text)
            self._wake.notify()

    def _close_windows(self, now: float) -> None:
        """Queue the summary of every window that has ended with events counted; a storm
        that goes on is counted in a new window (caller holds the lock)."""
        for kind, window in self._windows.items():
            if window.count and now >= window.ends_at:
                self._outbox.append(self._summary(kind, window))
                window.ends_at = time.monotonic() + self._config.min_interval_s
                window.count, window.level = 0, 0
                window.latest.clear()

    def _summary(self, kind: str, window: _Window) -> _Note:
        one, several = _NAMES[kind]
        counted = f"{window.count} more {one if window.count == 1 else several}"
        quoted = list(window.latest)
        body = "\n".join(
            [
                f"{counted} in the last {self._config.min_interval_s:g} s; "
                + ("the latest:" if window.count > len(quoted) else "each:"),
                *(f"- {text}" for text in quoted),
            ]
        )
        return _Note(self._title(counted), body, window.level)

    def _title(self, what: str) -> str:
        return f"{self._name}: {what}"

    def _run(self) -> None:
        """Send queued messages; wake when one is queued or a counting window ends."""
        while True:
            with self._wake:
                self._close_windows(time.monotonic())
                if not self._outbox:
                    if self._closing:
                        return
                    self._wake.wait(self._next_window_end())
                    continue
                note = self._outbox.popleft()
            self._send(note)

    def _next_window_end(self) -> float | None:
        """Seconds until the next window with counted events ends (None: nothing to wait for)."""
        ends = [window.ends_at for window in self._windows.values() if window.count]
        return max(0.0, min(ends) - time.monotonic()) if ends else None

    def _send(self, note: _Note) -> None:
        """One message to every target, within `timeout_s`; a failure is logged once a window."""
        import apprise

        try:
            result = self._targets.notify(
                body=note.body,
                title=note.title,
                notify_type=_notify_type(note.level),
                timeout=self._config.timeout_s,
            )
        except Exception as exc:  # apprise's own bug: never the bot's problem
            self._failed(f"apprise raised {type(exc).__name__}")
            return
        if result.status is not apprise.AppriseResultStatus.SUCCESS:
            timeouts = result.timeout_count
            self._failed(
                f"{result.failed_count} of {len(result)} targets failed"
                + (f" ({timeouts} out of time, {self._config.timeout_s:g} s)" if timeouts else "")
            )

    def _failed(self, what: str) -> None:
        now = time.monotonic()
        if now < self._failures_quiet_until:
            return
        self._failures_quiet_until = now + self._config.min_interval_s
        logger.warning(
            "a notification was not delivered: {what}; the bot goes on (further failures in "
            "the next {s:g} s are not logged)",
            what=what,
            s=self._config.min_interval_s,
        )


def _event_text(record: Record) -> str:
    """The event as logged, with its context not already in the message, scrubbed of
    secrets and cut to a quotable length."""
    message = record["message"]
    context = ", ".join(
        f"{key}={value}"
        for key, value in record["extra"].items()
        if key != "notify" and str(value) not in message
    )
    text = logs.scrub(f"{message} ({context})" if context else message)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def _notify_type(level: int) -> str:
    if level >= logging.ERROR:
        return "failure"
    return "warning" if level >= logging.WARNING else "info"


def start(config: NotifyConfig, urls: SecretStr | None, name: str) -> Notifier | None:
    """A started notifier for the URLs of the secret, or None (off: no URL, or no event
    chosen). A URL apprise cannot send to stops the start: alerts must not fail silently."""
    if urls is None or not config.events:
        logger.info(
            "notifications off: {why}",
            why=f"no {NOTIFY_URLS_NAME}" if urls is None else "[notify] events is empty",
        )
        return None
    import apprise  # here, not at import: every other command spares its import time

    # Its warnings can spell a URL's parts (a host, a chat id); the notifier reports itself.
    logging.getLogger("apprise").disabled = True
    targets = apprise.Apprise()
    found = split_urls(urls)
    if not found:
        raise ConfigError(
            f"{NOTIFY_URLS_NAME} holds no URL (only separators): give one apprise URL per "
            "line or comma, or unset it to turn notifications off"
        )
    for number, url in enumerate(found, start=1):
        target = apprise.Apprise.instantiate(url)
        if target is None:
            scheme = _SCHEME.match(url)
            raise ConfigError(
                f"{NOTIFY_URLS_NAME}: URL {number} of {len(found)} "
                f"({scheme.group(1) + '://...' if scheme else 'no scheme://'}) is not one apprise "
                "can send to; see https://github.com/caronc/apprise/wiki for each service's form"
            )
        # Its connections cannot outlive the call's bound either.
        target.socket_connect_timeout = min(target.socket_connect_timeout, config.timeout_s)
        target.socket_read_timeout = min(target.socket_read_timeout, config.timeout_s)
        targets.add(target)
    notifier = Notifier(targets, config, name)
    notifier.start()
    logger.info(
        "notifications on: {n} target(s), events {events}, at most one summary per kind "
        "every {s:g} s",
        n=len(found),
        events=", ".join(config.events),
        s=config.min_interval_s,
    )
    return notifier
