"""The simulator's price history: the candles `/v5/market/kline` and the `kline` stream serve,
and the 24-hour statistics of the tickers.

On Bybit a closed candle is history: asked again, with any `limit` or window, it is the same,
and an open candle keeps its open. So the simulator keeps what its price did, a bar a minute
per symbol, from the moment it started (the anchor), and builds every interval's candles from
those bars: a price move or a trade sets the close, and the volume and turnover are its own
trades. Before the anchor lies a synthetic
history, deterministic in (symbol, interval, candle start, anchor price): each close within
0.5 % of the anchor price, each open the close before it, and the candle before the anchor's
closing at the anchor price, where the real history takes over.

The bars of the last `KEPT_MINUTES` are kept; a candle older than that is built from what is
left of it. Should the clock go back before the anchor (a replay's virtual clock set after
the simulator started), the history starts again from there.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from bot.sim.views import fmt, to_tick, unit

__all__ = ["KEPT_MINUTES", "DayStats", "PriceHistory", "candle_after", "candle_starts"]

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
_WEEK_MS: Final = 7 * DAY_MS
#: Bybit's weekly candles start on Monday 00:00 UTC; 1970-01-05 was the first Monday.
_FIRST_MONDAY_MS: Final = 4 * DAY_MS
#: 31 days of minute bars per symbol: a month's candle is whole.
KEPT_MINUTES: Final = 31 * 24 * 60
_SWING: Final = Decimal("0.005")
_PERCENT_STEP: Final = Decimal("0.000001")  # Bybit's price24hPcnt: a fraction, 6 places
#: Candles whose settled sums are kept per symbol (every interval's open and last candle).
_SETTLED_KEPT: Final = 64


# ------------------------------------------------------------------------ the calendar


def candle_starts(
    interval: str, start: int | None, end: int | None, limit: int, now: int, listed: int
) -> list[int]:
    """Start times (ms, newest first) of the candles a kline request covers: with `start`
    alone, the first `limit` candles from the one holding `start` on (as Bybit pages forward
    through history); otherwise the last `limit` up to `end` (or now), none before `start`.
    A market has no candles before the one holding `listed`, its listing time."""
    first = candle_open(interval, listed)
    if start is not None and end is None:
        forward: list[int] = []
        if start > now:
            return forward  # nothing has opened yet (and a far future has no calendar)
        opened = max(candle_open(interval, max(start, 0)), first)
        while len(forward) < limit and opened <= now:
            forward.append(opened)
            opened = candle_after(interval, opened)
        return forward[::-1]
    backward: list[int] = []
    opened = candle_open(interval, min(end, now) if end is not None else now)
    while len(backward) < limit and opened >= first:
        if start is not None and candle_after(interval, opened) <= start:
            break
        backward.append(opened)
        opened = candle_before(interval, opened)
    return backward


def candle_open(interval: str, moment: int) -> int:
    """When the `interval` candle holding `moment` (ms) opened."""
    if interval == "M":
        at = datetime.fromtimestamp(moment / 1000, tz=UTC)
        return int(datetime(at.year, at.month, 1, tzinfo=UTC).timestamp() * 1000)
    length, origin = _candle_length(interval)
    return (moment - origin) // length * length + origin


def candle_after(interval: str, opened: int) -> int:
    """The next candle's open (the end of the one that opened at `opened`)."""
    if interval == "M":
        at = datetime.fromtimestamp(opened / 1000, tz=UTC)
        year, month = (at.year, at.month + 1) if at.month < 12 else (at.year + 1, 1)
        return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)
    return opened + _candle_length(interval)[0]


def candle_before(interval: str, opened: int) -> int:
    """The previous candle's open; negative before 1970 (the first candle)."""
    if interval == "M":
        at = datetime.fromtimestamp(opened / 1000, tz=UTC)
        if at.year == 1970 and at.month == 1:
            return -1
        year, month = (at.year, at.month - 1) if at.month > 1 else (at.year - 1, 12)
        return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)
    return opened - _candle_length(interval)[0]


def _candle_length(interval: str) -> tuple[int, int]:
    """(length, origin) in ms of a fixed-length interval: weeks open on Mondays."""
    if interval == "W":
        return _WEEK_MS, _FIRST_MONDAY_MS
    return (DAY_MS if interval == "D" else int(interval) * MINUTE_MS), 0


# ------------------------------------------------------------------------ the history


@dataclass
class _Bar:
    """One minute of a symbol: its prices and its trades."""

    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = Decimal(0)
    turnover: Decimal = Decimal(0)

    def take(self, price: Decimal) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)


@dataclass(frozen=True, slots=True)
class _Range:
    """The extremes and the trades of some bars."""

    high: Decimal
    low: Decimal
    volume: Decimal
    turnover: Decimal

    @classmethod
    def of(cls, bars: Iterable[_Bar], found: _Range | None = None) -> _Range | None:
        """The range of `bars`, added to `found` if given."""
        for bar in bars:
            found = (
                cls(bar.high, bar.low, bar.volume, bar.turnover)
                if found is None
                else cls(
                    max(found.high, bar.high),
                    min(found.low, bar.low),
                    found.volume + bar.volume,
                    found.turnover + bar.turnover,
                )
            )
        return found


@dataclass(frozen=True, slots=True)
class DayStats:
    """A ticker's statistics: the prices 24 h and 1 h ago, the last 24 h's range and trades."""

    prev_24h: Decimal
    prev_1h: Decimal
    high_24h: Decimal
    low_24h: Decimal
    volume_24h: Decimal
    turnover_24h: Decimal

    def change_24h(self, last: Decimal) -> Decimal:
        """`price24hPcnt`: the change since 24 h ago, a fraction."""
        return ((last - self.prev_24h) / self.prev_24h).quantize(_PERCENT_STEP)


class _Symbol:
    """One symbol's minute bars from the anchor on (the caller holds the exchange's lock)."""

    def __init__(self, anchor_ms: int, price: Decimal) -> None:
        self.anchor_ms = anchor_ms - anchor_ms % MINUTE_MS
        self.anchor_price = price
        self.last = price
        self.bars: dict[int, _Bar] = {}
        self.minutes: list[int] = []  # the bars' starts, sorted
        self._forgotten_close: Decimal | None = None  # the close of the newest bar let go
        self._day: tuple[int, _Range | None] | None = None  # closed_day's, for one minute
        #: settled's sums, by candle start: (up to, range, last close)
        self._settled: OrderedDict[int, tuple[int, _Range | None, Decimal | None]] = OrderedDict()

    def bar(self, at_ms: int) -> _Bar:
        minute = at_ms - at_ms % MINUTE_MS
        bar = self.bars.get(minute)
        if bar is None:
            opened = self.price_at(minute)
            bar = self.bars[minute] = _Bar(opened, opened, opened, opened)
            bisect.insort(self.minutes, minute)
            if len(self.minutes) > KEPT_MINUTES:
                self._forgotten_close = self.bars.pop(self.minutes.pop(0)).close
        return bar

    def price_at(self, moment: int) -> Decimal:
        """The price at `moment` (ms, from the anchor on): the close of the last bar opened
        before it (a bar still open: the last price); before the first bar kept, the close
        of the last one let go, or the anchor price."""
        index = bisect.bisect_left(self.minutes, moment)
        if index:
            return self.bars[self.minutes[index - 1]].close
        return self._forgotten_close if self._forgotten_close is not None else self.anchor_price

    def bars_between(self, start: int, end: int) -> Iterable[_Bar]:
        """The bars of [start, end), oldest first."""
        first = bisect.bisect_left(self.minutes, start)
        last = bisect.bisect_left(self.minutes, end)
        return (self.bars[minute] for minute in self.minutes[first:last])

    def settled(self, start: int, end: int) -> tuple[_Range | None, Decimal | None]:
        """The range and the last close of the bars of [start, end), `end` no later than the
        newest bar's minute: bars that no longer change (a clock gone back goes to the newest
        one), so each start's sums are kept and extended as minutes pass, not summed again
        at every push of an open daily or monthly candle."""
        up_to, found, close = self._settled.pop(start, (start, None, None))
        if up_to > end:  # asked for less than was summed: sum afresh
            up_to, found, close = start, None, None
        for bar in self.bars_between(up_to, end):
            found, close = _Range.of((bar,), found), bar.close
        self._settled[start] = (max(up_to, end), found, close)  # the latest asked last
        if len(self._settled) > _SETTLED_KEPT:
            self._settled.popitem(last=False)
        return found, close

    def closed_day(self, minute: int) -> _Range | None:
        """The range and trades of the bars of the 24 h to `minute` but its own (1,439 of
        them), worked out once a minute."""
        if self._day is None or self._day[0] != minute:
            since = minute - DAY_MS + MINUTE_MS
            self._day = (minute, _Range.of(self.bars_between(since, minute)))
        return self._day[1]


class PriceHistory:
    """Every symbol's price history (see the module's notes). Not thread-safe: the exchange
    calls it under its lock."""

    def __init__(self, prices: Mapping[str, Decimal], now_ms: int) -> None:
        self._symbols = {symbol: _Symbol(now_ms, price) for symbol, price in prices.items()}

    def restart(self, symbol: str, price: Decimal, now_ms: int) -> None:
        """The history of `symbol` starts again at `price` now (a resumed price)."""
        self._symbols[symbol] = _Symbol(now_ms, price)

    def record_price(self, symbol: str, price: Decimal, now_ms: int) -> None:
        """The price now `price`: its candle's high, low and close take it."""
        self.record_trade(symbol, price, Decimal(0), now_ms)

    def record_trade(self, symbol: str, price: Decimal, qty: Decimal, now_ms: int) -> None:
        """A trade of `qty` at `price`: its candle's high, low and close take the price (the
        last trade closes a candle, as on Bybit), its volume and turnover the trade."""
        history = self._current(symbol, now_ms)
        bar = self._newest_bar(history, now_ms)
        bar.take(price)
        bar.close = history.last = price
        bar.volume += qty
        bar.turnover += qty * price

    def candles(
        self, symbol: str, interval: str, starts: list[int], tick: Decimal
    ) -> list[list[str]]:
        """`/v5/market/kline` rows ([start, open, high, low, close, volume, turnover]) of the
        candles opening at `starts` (newest first); the open one ends at the last price."""
        history = self._symbols[symbol]
        return [
            self._real(history, interval, start)
            if candle_after(interval, start) > history.anchor_ms
            else self._synthetic(history, symbol, interval, start, tick)
            for start in starts
        ]

    def day_stats(self, symbol: str, now_ms: int) -> DayStats:
        """What a ticker reports of the last 24 hours, a minute at a time (before the anchor:
        the anchor price, and no trades)."""
        history = self._symbols[symbol]
        minute = now_ms - now_ms % MINUTE_MS

        def price_ago(span_ms: int) -> Decimal:
            moment = now_ms - span_ms
            return history.price_at(moment) if moment >= history.anchor_ms else history.anchor_price

        prev = price_ago(DAY_MS)
        ranges = [_Range(prev, prev, Decimal(0), Decimal(0)), history.closed_day(minute)]
        current = history.bars.get(minute)
        if current is not None:
            ranges.append(_Range(current.high, current.low, current.volume, current.turnover))
        day = [found for found in ranges if found is not None]
        return DayStats(
            prev_24h=prev,
            prev_1h=price_ago(HOUR_MS),
            high_24h=max(found.high for found in day),
            low_24h=min(found.low for found in day),
            volume_24h=sum((found.volume for found in day), Decimal(0)),
            turnover_24h=sum((found.turnover for found in day), Decimal(0)),
        )

    @staticmethod
    def _newest_bar(history: _Symbol, now_ms: int) -> _Bar:
        """The bar of `now_ms`; a clock that went back (a skew) never rewrites a closed bar:
        the newest one takes what comes."""
        if history.minutes and now_ms < history.minutes[-1]:
            return history.bars[history.minutes[-1]]
        return history.bar(now_ms)

    def _current(self, symbol: str, now_ms: int) -> _Symbol:
        history = self._symbols[symbol]
        if now_ms < history.anchor_ms:  # the clock went back before the start: start again
            history = self._symbols[symbol] = _Symbol(now_ms, history.last)
        return history

    @staticmethod
    def _real(history: _Symbol, interval: str, start: int) -> list[str]:
        opened = history.price_at(start) if start >= history.anchor_ms else history.anchor_price
        end = candle_after(interval, start)
        # Only the bars before the newest one are settled (none, before the first bar).
        newest = history.minutes[-1] if history.minutes else None
        settled_to = start if newest is None else max(start, min(end, newest))
        found, close = history.settled(start, settled_to)
        if newest is not None and start <= newest < end:  # the bar still taking prices
            found, close = _Range.of((history.bars[newest],), found), history.bars[newest].close
        if found is None:
            return _row(start, opened, opened, opened, opened, Decimal(0), Decimal(0))
        assert close is not None
        high, low = max(opened, found.high), min(opened, found.low)
        return _row(start, opened, high, low, close, found.volume, found.turnover)

    @staticmethod
    def _synthetic(
        history: _Symbol, symbol: str, interval: str, start: int, tick: Decimal
    ) -> list[str]:
        anchor = history.anchor_price
        last_synthetic = candle_before(interval, candle_open(interval, history.anchor_ms))

        def close_of(opened: int) -> Decimal:
            if opened == last_synthetic:
                return anchor
            offset = (unit(symbol, interval, opened, "c") * 2 - 1) * _SWING
            return max(to_tick(anchor * (1 + offset), tick, up=False), tick)

        close = close_of(start)
        before = candle_before(interval, start)
        opened = close_of(before) if before >= 0 else close
        wick_up = unit(symbol, interval, start, "h") * _SWING / 2
        wick_down = unit(symbol, interval, start, "l") * _SWING / 2
        high = to_tick(max(opened, close) * (1 + wick_up), tick, up=True)
        low = max(to_tick(min(opened, close) * (1 - wick_down), tick, up=False), tick)
        volume = (unit(symbol, interval, start, "v") * 1000).quantize(Decimal("0.001"))
        turnover = volume * (opened + close) / 2
        return _row(start, opened, high, low, close, volume, turnover)


def _row(
    start: int,
    opened: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    turnover: Decimal,
) -> list[str]:
    return [
        str(start),
        fmt(opened),
        fmt(high),
        fmt(low),
        fmt(close),
        fmt(volume),
        fmt(turnover.quantize(Decimal("0.0001"))),
    ]
