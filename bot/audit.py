"""The audit log: every signed request to the venue, one JSON line each, kept apart from the
journal and the logs so an operator (or an exchange's compliance desk) can answer "what did the
bot ask of which key, when, and what came back" without reading either.

The venue adapter builds a `VenueRequest` for each signed request it sends (REST through pybit,
and the private WebSocket's authentication as `ws:auth`) and hands it to its observers: an
`AuditLog` and the Prometheus metrics. A line holds only the record's own fields (time, key,
environment, endpoint, HTTP method, orderLinkId, retCode, HTTP status or error class, latency):
never a header, a parameter other than the orderLinkId, a signature or a secret; and each line
still passes the log scrubber, a second guard.

Lines are appended from the venue's threads, under a lock, to a line-buffered file: one small
write each, no fsync (a crash of the process loses nothing written; a power loss may lose the
last lines). `<state_dir>/audit/audit.jsonl` is rotated past `max_file_mb` into
`audit-<UTC time>.jsonl`; rotated files older than `retention_days`, or beyond `max_files`,
are deleted. `bot audit` reads them all, newest last, and needs no running bot.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TextIO

from bot.config import AuditConfig, ConfigError
from bot.logs import logger, scrub
from bot.messages import load_json, shape_problem

__all__ = [
    "CURRENT_FILE",
    "AuditLog",
    "RequestObserver",
    "VenueRequest",
    "iter_audit",
    "notify",
    "parse_since",
    "read_audit",
    "summary",
]

CURRENT_FILE: Final = "audit.jsonl"
_ROTATED_PREFIX: Final = "audit-"
_ROTATED_FORMAT: Final = "%Y%m%dT%H%M%S%fZ"
#: Rotated files are also pruned this often, so a quiet bot still drops files past retention.
_PRUNE_INTERVAL_S: Final = 3600.0
_SINCE_DURATION: Final = re.compile(r"([0-9]+)([smhd])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True, slots=True)
class VenueRequest:
    """One signed request to the venue and its outcome.

    `ret_code` is Bybit's retCode when an answer carried one; `http_status` the answer's HTTP
    status; `error` the exception's class when no usable answer came (a timeout, a dropped
    connection, an undecodable body). `limit` and `limit_remaining` are the answer's
    X-Bapi-Limit and X-Bapi-Limit-Status headers (the rate window's headroom), for the metrics.
    """

    at: float  # epoch seconds (wall clock) when the request was sent
    key: str
    environment: str
    endpoint: str
    method: str
    order_link_id: str | None
    ret_code: int | None
    http_status: int | None
    error: str | None
    latency_ms: float
    limit: int | None = None
    limit_remaining: int | None = None

    @property
    def outcome(self) -> str:
        return _outcome(self.ret_code, self.http_status, self.error)

    def audit_fields(self) -> dict[str, Any]:
        """What an audit line holds, and nothing else."""
        return {
            "ts": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds"),
            "key": self.key,
            "environment": self.environment,
            "endpoint": self.endpoint,
            "method": self.method,
            "order_link_id": self.order_link_id,
            "ret_code": self.ret_code,
            "http_status": self.http_status,
            "error": self.error,
            "latency_ms": round(self.latency_ms, 3),
        }


RequestObserver = Callable[[VenueRequest], None]


def _outcome(ret_code: int | None, http_status: int | None, error: str | None) -> str:
    """A request's answer in one short word: the retCode, else `http <status>`, else the
    error's class."""
    if ret_code is not None:
        return str(ret_code)
    if http_status is not None:
        return f"http {http_status}"
    return error or "?"


def notify(observers: Iterable[RequestObserver], record: VenueRequest) -> None:
    """Hand `record` to every observer; a failing observer never fails the request."""
    for observe in observers:
        try:
            observe(record)
        except Exception:
            logger.exception("a venue request observer failed")


class AuditLog:
    """The append-only audit file of one state directory; `write` is safe from any thread."""

    def __init__(self, directory: Path, config: AuditConfig) -> None:
        """ConfigError when the directory or the file cannot be opened."""
        self.directory = directory
        self._max_bytes = max(1, int(config.max_file_mb * 1024 * 1024))
        self._retention_s = config.retention_days * 86400.0
        self._max_files = config.max_files
        self._lock = threading.Lock()
        self._file: TextIO | None = None  # None after a failed rotation: the next write reopens
        self._size = 0
        self._closed = False
        self._failing = False  # a write failed: warned once, until one succeeds again
        self._next_prune = 0.0
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._open()
            self._prune()
        except OSError as exc:
            raise ConfigError(
                f"cannot open the audit log in {directory}: {exc.strerror or exc}; "
                "check state_dir and its permissions"
            ) from None

    def write(self, record: VenueRequest) -> None:
        """Append `record` as one line, rotating first when the line would pass the size."""
        line = scrub(json.dumps(record.audit_fields(), separators=(",", ":"))) + "\n"
        size = len(line.encode())
        with self._lock:
            if self._closed:
                return  # the bot is shutting down
            try:
                file = self._file or self._open()
                if self._size and self._size + size > self._max_bytes:
                    file = self._rotate(file)
                elif time.monotonic() >= self._next_prune:
                    self._prune()
                file.write(line)
                self._size += size
                self._failing = False
            except OSError as exc:
                self._failed(exc)
                # The line the file could not take stays in its buffer, to fail its every
                # flush again (its close at shutdown too): the next write reopens instead.
                self._discard()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()

    def _discard(self) -> None:
        """Close the current file, dropping what its buffer still holds: a full disk must
        not turn the bot's clean stop into a traceback (the failure was warned of)."""
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        """Warn that the disk refused a write, once until a write succeeds again."""
        if not self._failing:
            logger.warning(
                "cannot write the audit log in {dir}: {error}",
                dir=self.directory,
                error=exc.strerror or type(exc).__name__,
            )
        self._failing = True

    def _open(self) -> TextIO:
        """The current file, appended to, readable by its owner only."""
        fd = os.open(self.directory / CURRENT_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        self._size = os.fstat(fd).st_size
        return self._file

    def _rotate(self, full: TextIO) -> TextIO:
        """Rename the full current file after its time, open a new one, prune."""
        full.close()
        self._file = None
        stamp = datetime.now(UTC)
        # Two rotations within a microsecond: the later one gets the later name.
        while (target := self.directory / _rotated_name(stamp)).exists():
            stamp += timedelta(microseconds=1)
        (self.directory / CURRENT_FILE).rename(target)
        fresh = self._open()
        self._prune()
        return fresh

    def _prune(self) -> None:
        """Delete rotated files older than the retention, then the oldest beyond the count."""
        self._next_prune = time.monotonic() + _PRUNE_INTERVAL_S
        oldest_kept = time.time() - self._retention_s
        rotated = _rotated_files(self.directory)
        for path in rotated[: max(0, len(rotated) - self._max_files)]:
            path.unlink(missing_ok=True)
        for path in rotated[-self._max_files :]:
            try:
                if path.stat().st_mtime < oldest_kept:
                    path.unlink()
            except FileNotFoundError:
                continue


def _rotated_name(stamp: datetime) -> str:
    return f"{_ROTATED_PREFIX}{stamp.strftime(_ROTATED_FORMAT)}.jsonl"


def _rotated_files(directory: Path) -> list[Path]:
    """Rotated audit files, oldest first (their names are their rotation times); anything
    else so named (a directory) is not one."""
    return sorted(path for path in directory.glob(f"{_ROTATED_PREFIX}*.jsonl") if path.is_file())


def _files(directory: Path) -> list[Path]:
    """Every audit file, oldest first: the rotated ones, then the current one."""
    current = directory / CURRENT_FILE
    return _rotated_files(directory) + ([current] if current.is_file() else [])


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: a duration back from `now` (`90s`, `30m`, `1h`, `2d`) or an ISO-8601 time
    (UTC unless it names a zone). ValueError says what is accepted."""
    duration = _SINCE_DURATION.fullmatch(text.strip())
    if duration is not None:
        amount, unit = duration.groups()
        try:
            return now - timedelta(**{_UNITS[unit]: int(amount)})
        except OverflowError:
            raise ValueError(
                f"--since {text!r} reaches back before the year 1: give a shorter duration, "
                "or leave --since out for every request"
            ) from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration (30m, 1h, 2d; units s, m, h, d) nor an "
            "ISO-8601 time (2026-01-05 or 2026-01-05T14:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def read_audit(
    directory: Path, *, since: datetime | None = None, key: str | None = None, limit: int = 0
) -> list[dict[str, Any]]:
    """The audit lines (as dicts) matching the filters, newest last; with `limit`, only the
    latest that many. Files are read newest first and only until `limit` lines are found,
    holding no more than `limit` lines of each (a file holds 100,000 of them), and a rotated
    file last written before `since` is not opened at all."""
    if not limit:
        return list(iter_audit(directory, since=since, key=key))
    limit = min(limit, sys.maxsize)  # a deque holds no more (`--limit 10**20`: every line)
    found: list[dict[str, Any]] = []
    for path in reversed(_files(directory)):
        try:
            if since is not None and path.stat().st_mtime < since.timestamp():
                break  # this file and every older one end before `since`
            latest = deque(_matching(_lines(path), since, key), maxlen=limit - len(found))
        except FileNotFoundError:
            continue  # rotated or pruned away while we read
        found[:0] = latest
        if len(found) >= limit:
            break
    return found


def iter_audit(
    directory: Path, *, since: datetime | None = None, key: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every audit line (as a dict) matching the filters, oldest first, read as it is
    yielded: `bot audit --limit 0 --json` prints a gigabyte of them in little memory."""
    files = _files(directory)
    if since is not None:
        for index in range(len(files) - 1, -1, -1):
            try:
                ended_before = files[index].stat().st_mtime < since.timestamp()
            except FileNotFoundError:
                continue
            if ended_before:  # this file and every older one end before `since`
                files = files[index + 1 :]
                break
    for path in files:
        try:
            yield from _matching(_lines(path), since, key)
        except FileNotFoundError:
            continue  # rotated or pruned away before we came to it


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one file; a line that is not a JSON object (torn by a crash, damaged:
    nested too deep, holding NaN or a number beyond a float, which no JSON reader takes
    back, or text that is not Unicode) is skipped."""
    with path.open(encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                row = load_json(line)
            except ValueError:
                continue
            if isinstance(row, dict) and shape_problem(row) is None:
                yield row


def _matching(
    rows: Iterable[dict[str, Any]], since: datetime | None, key: str | None
) -> Iterator[dict[str, Any]]:
    for row in rows:
        if key is not None and row.get("key") != key:
            continue
        if since is not None and not _at_or_after(row.get("ts"), since):
            continue
        yield row


def _at_or_after(ts: object, since: datetime) -> bool:
    try:
        return datetime.fromisoformat(str(ts)) >= since
    except (TypeError, ValueError):  # not a time, or one without its zone
        return False


def _shorten(text: str, width: int) -> str:
    """`text` in at most `width` characters: its start and its end, an ellipsis between
    (the end of an orderLinkId is its leg, the start its strategy)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head) :]}"


def summary(row: dict[str, Any]) -> dict[str, str]:
    """One audit line as a row of `bot audit`'s table: time (UTC), key, endpoint, orderLinkId
    (shortened), answer, ms."""
    try:
        when = f"{datetime.fromisoformat(str(row.get('ts'))).astimezone(UTC):%m-%d %H:%M:%S}"
    except (ValueError, OverflowError):  # not a time (a damaged line), or past year 9999 in UTC
        when = str(row.get("ts"))
    latency = row.get("latency_ms")
    return {
        "time": when,
        "key": str(row.get("key") or ""),
        "endpoint": str(row.get("endpoint") or "").removeprefix("/v5/"),
        "orderLinkId": _shorten(str(row.get("order_link_id") or ""), 13),
        "answer": str(_outcome(row.get("ret_code"), row.get("http_status"), row.get("error"))),
        "ms": f"{latency:.1f}" if isinstance(latency, int | float) else "",
    }
