"""A signal history: JSON lines of signals (the webhook's schema) and price points.

    {"id": "s1", "symbol": "BTCUSDT", "side": "buy", "stop_loss": 95000, "ts": 1790000000000}
    {"ts": "2026-10-01T09:30:00Z", "prices": {"BTCUSDT": 95800, "ETHUSDT": 2480}}

A line with `prices` is a price point (only `ts` and `prices`); any other line is a signal,
checked here by the webhook's own rules (`parse_signal`), so a file that reads cleanly is one
the webhook will accept. Blank lines are skipped. Records are returned in time order (ties in
file order): a history merged from several files need not be sorted. Every problem is a
`HistoryError` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from bot.files import FileTooLargeError, NotRegularFileError, read_small_file
from bot.messages import (
    MAX_NUMBER,
    SYMBOL_PATTERN,
    Signal,
    SignalError,
    json_number,  # the signal schema's own rules: a price point reads like a signal
    load_json,
    parse_signal,
    parse_ts,
)

__all__ = ["History", "HistoryError", "PricePoint", "SignalRecord", "read_history"]

_PRICE_POINT_KEYS: Final = frozenset({"ts", "prices"})
#: A history is read whole before the replay starts (every line checked first).
_MAX_HISTORY_BYTES: Final = 512 * 2**20
#: A replay's virtual clock runs in epoch milliseconds, from a little before the first record
#: to a little after the last: records are kept inside these bounds.
_FIRST_TS: Final = datetime(1970, 1, 2, tzinfo=UTC)
_LAST_TS: Final = datetime(9999, 1, 1, tzinfo=UTC)


class HistoryError(ValueError):
    """The history file cannot be replayed; the message names the file and line."""


@dataclass(frozen=True)
class SignalRecord:
    """A signal line: the body the webhook receives, as written, its time, and what it parses
    to, parsed again when asked (`signal`): a history holds its bodies, not every signal
    parsed (about a kilobyte each, with the raw fields it keeps)."""

    line: int
    body: bytes
    source: str
    ts: datetime

    @property
    def signal(self) -> Signal:
        return parse_signal(self.source, load_json(self.body))


class _Prices(BaseModel):
    """A price point's fields, validated like a signal's `ts` and prices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: datetime
    prices: dict[str, Decimal]

    @field_validator("ts", mode="before")
    @classmethod
    def _timestamp(cls, value: object) -> object:
        return parse_ts(value)

    @field_validator("ts")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 9999-12-31T23:59:59-05:00 is past the year 9999 in UTC
            raise ValueError("is out of range once in UTC") from None

    @field_validator("prices", mode="before")
    @classmethod
    def _numbers(cls, value: object) -> object:
        if not isinstance(value, dict) or not value:
            raise ValueError('must be an object of symbol to price, e.g. {"BTCUSDT": 97000}')
        return {_symbol(str(symbol)): json_number(price) for symbol, price in value.items()}

    @field_validator("prices")
    @classmethod
    def _positive(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for symbol, price in value.items():
            if not price.is_finite() or not 0 < price <= MAX_NUMBER:
                raise ValueError(f"{symbol}: must be a positive number, got {price}")
        return value


def _symbol(text: str) -> str:
    """A price point's symbol, in capitals (ASCII only: "\\u017f".upper() is "S"); ValueError if
    it is no Bybit symbol."""
    text = text.strip()
    symbol = text.upper() if text.isascii() else text
    if not re.fullmatch(SYMBOL_PATTERN, symbol):
        raise ValueError(f"{text!r} is not a Bybit symbol such as BTCUSDT")
    return symbol


@dataclass(frozen=True)
class PricePoint:
    """A price line: the venue's price of each symbol from `ts` on."""

    line: int
    ts: datetime
    prices: Mapping[str, Decimal]


Record = SignalRecord | PricePoint


@dataclass(frozen=True)
class History:
    """Every record of one file, in time order."""

    path: Path
    records: tuple[Record, ...]
    signals: tuple[SignalRecord, ...] = field(init=False)
    price_points: tuple[PricePoint, ...] = field(init=False)

    def __post_init__(self) -> None:
        signals = tuple(r for r in self.records if isinstance(r, SignalRecord))
        object.__setattr__(self, "signals", signals)
        points = tuple(r for r in self.records if isinstance(r, PricePoint))
        object.__setattr__(self, "price_points", points)

    @property
    def start(self) -> datetime:
        return self.records[0].ts

    @property
    def end(self) -> datetime:
        return self.records[-1].ts

    def symbols(self) -> list[str]:
        """Every symbol a signal or a price point names, sorted."""
        named = {record.signal.symbol for record in self.signals}  # parsed again, one at a time
        named.update(symbol for point in self.price_points for symbol in point.prices)
        return sorted(named)

    def first_prices(self) -> dict[str, tuple[int, Decimal]]:
        """Each symbol's first price in time, with its line: the venue's price at the start."""
        first: dict[str, tuple[int, Decimal]] = {}
        for point in self.price_points:
            for symbol, price in point.prices.items():
                first.setdefault(symbol, (point.line, price))
        return first


def read_history(path: Path, source: str) -> History:
    """Read and check the whole file (signals attributed to `source`) before anything runs."""
    try:
        text = read_small_file(path, _MAX_HISTORY_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except (NotRegularFileError, IsADirectoryError):
        raise HistoryError(
            f"{path}: not a regular file (a history is a file of JSON lines)"
        ) from None
    except FileTooLargeError:
        raise HistoryError(
            f"{path}: over {_MAX_HISTORY_BYTES // 2**20} MiB: replay a part of it at a time"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{path}: cannot be read: {exc}") from None
    records = [_record(path, number, line, source) for number, line in _lines(text)]
    if not any(isinstance(record, SignalRecord) for record in records):
        raise HistoryError(f"{path}: holds no signal (one JSON object per line)")
    return History(path, tuple(sorted(records, key=lambda record: (record.ts, record.line))))


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _record(path: Path, number: int, line: str, source: str) -> Record:
    where = f"{path}:{number}"
    try:
        payload = load_json(line)
    except ValueError as exc:
        raise HistoryError(f"{where}: not a JSON object: {exc}") from None
    if not isinstance(payload, dict):
        raise HistoryError(f"{where}: not a JSON object (a signal or a price point)")
    record: Record
    if "prices" in payload:
        record = _price_point(where, number, payload)
    else:
        try:
            signal = parse_signal(source, payload)  # checked now; kept as its body
            record = SignalRecord(number, line.encode(), source, signal.ts)
        except SignalError as exc:
            raise HistoryError(f"{where}: invalid signal: {exc}") from None
    if not _FIRST_TS <= record.ts <= _LAST_TS:
        raise HistoryError(
            f"{where}: ts {record.ts.isoformat()} is outside the times a replay's clock runs "
            f"({_FIRST_TS.date()} to {_LAST_TS.date()}): give the record its real time"
        )
    return record


def _price_point(where: str, number: int, payload: dict[str, Any]) -> PricePoint:
    extra = sorted(set(payload) - _PRICE_POINT_KEYS)
    if extra:
        raise HistoryError(f"{where}: a price point has only ts and prices, not {', '.join(extra)}")
    try:
        point = _Prices.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        name = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise HistoryError(f"{where}: invalid price point: {name}: {message}") from None
    return PricePoint(number, point.ts, point.prices)
