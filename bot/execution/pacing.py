"""Pacing per key and endpoint: a burst is queued and sent at the venue's pace, never refused
for our own speed.

Bybit limits private requests per UID, per endpoint, in a rolling one-second window, and says
on every answer how much is left (`X-Bapi-Limit`, `X-Bapi-Limit-Status`,
`X-Bapi-Limit-Reset-Timestamp`). Each key gets one `Pacer`; each endpoint of it one
`RateWindow`, seeded with Bybit's published default and corrected from those headers: the
limit, and how much of the venue's window is already used (after a restart, by the run that
crashed), which is why a new window sends one request at a time until the first answer.

A request counts from the moment its answer arrives: the venue counted it when it arrived,
which is earlier, so our window is never more optimistic than the venue's, however long the
request waited for a thread or on the network. Until then it counts as inside the window.

Above every key sits the machine's `IpGate`: Bybit also limits an IP, over all its keys and
public requests, and a breach bans them all for at least 10 minutes. After restarts and
venue faults, catch-up reads, look-ups and retries of several keys can bunch together; the
gate holds them to `IP_REQUESTS_PER_WINDOW` in any 5 s.
"""

from __future__ import annotations

import asyncio
import math
import mmap
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bot import metrics
from bot.logs import logger

__all__ = [
    "BYBIT_LIMITS_PER_S",
    "IP_REQUESTS_FILE",
    "IP_REQUESTS_PER_WINDOW",
    "SHARED_IP_GATE",
    "IpGate",
    "PaceTooLong",
    "Pacer",
    "RateWindow",
    "Slot",
]

#: Bybit's documented default per-UID limits (requests per second) for what the bot calls;
#: linear category, unified account. Anything else gets `_DEFAULT_LIMIT_PER_S`.
BYBIT_LIMITS_PER_S: Final[Mapping[str, int]] = {
    "/v5/order/create": 10,
    "/v5/order/amend": 10,
    "/v5/order/cancel": 10,
    "/v5/order/cancel-all": 10,
    "/v5/order/realtime": 50,
    "/v5/order/history": 50,
    "/v5/execution/list": 50,
    "/v5/position/list": 50,
    "/v5/position/closed-pnl": 50,
    "/v5/position/set-leverage": 10,
    "/v5/account/wallet-balance": 50,
    "/v5/account/info": 50,
    "/v5/user/query-api": 10,
}
_DEFAULT_LIMIT_PER_S: Final = 10
#: Bybit's IP limit is 600 requests in any 5 s ("do not run at the very edge"): 50 are left
#: for requests that bunch on the way and for a look by `bot keys check` meanwhile.
IP_REQUESTS_PER_WINDOW: Final = 550
IP_WINDOW_S: Final = 5.0
#: `IpGate.remember`'s file in the state directory, and its size: more slots than a full
#: window holds, one time each.
IP_REQUESTS_FILE: Final = "ip_requests.bin"
_RING_SLOTS: Final = 1024
_RING_SLOT: Final = struct.Struct("<d")
#: Beside it, the wall-clock end of a ban the venue imposed (`IpGate.pause`), and the most of
#: one a restart believes (a corrupt file, or a clock set back, never stops the bot for long).
_BAN_SUFFIX: Final = ".ban"
_MAX_REMEMBERED_BAN_S: Final = 3600.0
_UNLIMITED: Final = 1_000_000
_WINDOW_S: Final = 1.0
#: Added to the window for clock granularity between us and the venue.
_GUARD_S: Final = 0.01
_POLL_S: Final = 0.005


class PaceTooLong(Exception):
    """Room in the window is further away than the caller is willing to wait."""

    def __init__(self, wait_s: float, *, banned: bool = False) -> None:
        super().__init__(
            f"the venue refuses this address (Bybit's IP limit) for another {wait_s:.0f} s;"
            " nothing is sent until then"
            if banned
            else f"the rate limit leaves no room for {wait_s:.1f} s"
        )
        self.wait_s = wait_s


@dataclass
class IpGate:
    """Every request from this machine, whichever key or public path it is for: Bybit limits
    an IP to 600 requests in any 5 s, and answers the one over with HTTP 403 and a ban of at
    least 10 minutes (every key stops). At most `limit` in any rolling `window_s`, counted as
    they leave, and nothing during a ban."""

    clock: Callable[[], float] = time.monotonic
    limit: int = IP_REQUESTS_PER_WINDOW
    window_s: float = IP_WINDOW_S
    until: float = 0.0
    _sent: deque[float] = field(default_factory=deque)
    #: the send times in a file as well (`remember`), and the slot the next one takes
    _ring: mmap.mmap | None = None
    _next: int = 0
    #: where a ban's end is kept for the next run (`remember`)
    _ban_file: Path | None = None

    def remember(self, path: Path) -> None:
        """Keep the send times in `path` too, and count those of an earlier run that are
        still inside the window: Bybit counts the address, not the process, and a bot killed
        and started again at once would otherwise begin with an empty window over a full
        one. The file is a ring of wall-clock times mapped into memory, so a kill -9 loses
        none of them. One process per file (the journal's lock sees to it for a state dir)."""
        self.forget()
        size = _RING_SLOTS * _RING_SLOT.size
        with path.open("a+b") as file:  # created if missing, never emptied
            if file.seek(0, os.SEEK_END) != size:
                file.truncate(size)
            ring = mmap.mmap(file.fileno(), size)
        times = [when for (when,) in _RING_SLOT.iter_unpack(ring)]
        wall, now = time.time(), self.clock()
        recent = [now - (wall - when) for when in times if wall - self.window_s <= when <= wall]
        self._sent = deque(sorted([*self._sent, *recent]))
        self._ring, self._next = ring, (times.index(max(times)) + 1) % _RING_SLOTS
        self._ban_file = path.with_suffix(_BAN_SUFFIX)
        self.until = max(self.until, now + _ban_left_s(self._ban_file, wall))

    def forget(self) -> None:
        """Stop keeping the send times in a file."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._ban_file = None

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` (a ban). Kept in the ban file too, when remembering: a
        bot restarted during a ban would otherwise start with requests that prolong it."""
        until = self.clock() + seconds
        if until <= self.until:
            return
        self.until = until
        if self._ban_file is not None:
            _keep_ban_end(self._ban_file, time.time() + seconds)

    def paused_for(self) -> float:
        """Seconds left of a pause the venue imposed on this address (a ban: 10 minutes)."""
        return max(0.0, self.until - self.clock())

    def wait_s(self) -> float:
        """How long before one more request may leave: the ban, or the oldest request in a
        full window ageing out of it."""
        now = self.clock()
        horizon = now - self.window_s - _GUARD_S
        while self._sent and self._sent[0] < horizon:
            self._sent.popleft()
        banned = self.until - now
        if len(self._sent) < self.limit:
            return max(0.0, banned)
        return max(banned, self._sent[0] - horizon)

    def count(self) -> None:
        """A request leaves now."""
        self._sent.append(self.clock())
        if self._ring is not None:
            _RING_SLOT.pack_into(self._ring, self._next * _RING_SLOT.size, time.time())
            self._next = (self._next + 1) % _RING_SLOTS


def _ban_left_s(path: Path, wall: float) -> float:
    """Seconds left of the ban `path` records (0: none, over, or unreadable), at most
    `_MAX_REMEMBERED_BAN_S`."""
    try:
        end = float(path.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return 0.0
    left = end - wall
    return min(left, _MAX_REMEMBERED_BAN_S) if math.isfinite(left) and left > 0 else 0.0


def _keep_ban_end(path: Path, end: float) -> None:
    """Write a ban's wall-clock end to `path` whole (a temporary file, then a rename); a
    failure only loses the memory of it, so it is logged, never raised."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(repr(end), encoding="ascii")
        os.replace(temporary, path)
    except OSError as exc:
        logger.warning("cannot keep the IP ban's end in {path}: {error}", path=path, error=exc)


#: One process, one IP: every key's pacer shares this gate.
SHARED_IP_GATE: Final = IpGate()


@dataclass(eq=False)
class Slot:
    """One request's place in a window; `done` is set when its answer (or failure) arrives."""

    done: float | None = None
    #: set as the request leaves: from then on only its answer frees the slot
    sent: bool = False

    def finish(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.done = clock()


@dataclass
class RateWindow:
    """At most `limit` requests in any rolling window, FIFO among waiters."""

    limit: int
    clock: Callable[[], float] = time.monotonic
    ip_gate: IpGate = field(default_factory=IpGate)
    _slots: deque[Slot] = field(default_factory=deque)
    #: whether the venue has told us how much of its window is used (public: nothing to tell)
    calibrated: bool = False
    _blocked_until: float = 0.0
    _turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def acquire(self, max_wait_s: float = float("inf")) -> Slot:
        """Wait for room, then hold a slot; call `slot.finish()` once the answer is in.

        Raises `PaceTooLong` instead of waiting longer than `max_wait_s` (a ban, a long reset).
        """
        async with self._turn:  # first come, first served
            while True:
                wait, limit = self._wait()
                if wait > max_wait_s:
                    raise PaceTooLong(wait, banned=self.ip_gate.paused_for() > 0)
                if wait <= 0:
                    slot = Slot()
                    self._slots.append(slot)
                    self.ip_gate.count()
                    return slot
                metrics.VENUE_PACING_WAIT.labels(limit).inc(wait)
                await asyncio.sleep(wait)

    def _wait_s(self) -> float:
        """How long before one more request may leave."""
        return self._wait()[0]

    def _wait(self) -> tuple[float, str]:
        """How long before one more request may leave, and which limit holds it
        (`metrics.VENUE_PACING_WAIT`'s label)."""
        now = self.clock()
        horizon = now - _WINDOW_S - _GUARD_S
        while self._slots and (done := self._slots[0].done) is not None and done < horizon:
            self._slots.popleft()
        key_paused = self._blocked_until - now
        ip_wait = self.ip_gate.wait_s()
        if key_paused > 0 or ip_wait > 0:
            return (ip_wait, "ip") if ip_wait >= key_paused else (key_paused, "key")
        if not self.calibrated and any(slot.done is None for slot in self._slots):
            # Until the venue has said how much of its window is used (another process,
            # or our own previous run, may have used it), one request at a time.
            return _POLL_S, "calibrating"
        if len(self._slots) < self.limit:
            return 0.0, ""
        oldest = self._slots[0].done
        if oldest is None:  # the oldest counted request is still under way
            return _POLL_S, "key"
        return oldest - horizon, "key"

    def release(self, slot: Slot) -> None:
        """Give back a slot whose request never left (its caller was cancelled)."""
        if not slot.sent and slot in self._slots:
            self._slots.remove(slot)

    def observe(self, limit: int | None, remaining: int | None, reset_in_s: float | None) -> None:
        """Adopt what the venue says: its limit for this key, how much of its window is used
        (requests we did not count, e.g. of a run that crashed, take room until they age out),
        and a pause when none is left."""
        if limit is not None and limit > 0:
            self.limit = limit
        if remaining is not None:
            self.calibrated = True
            unseen = (self.limit - len(self._slots)) - remaining
            now = self.clock()
            self._slots.extend(Slot(done=now, sent=True) for _ in range(max(0, unseen)))
        if remaining == 0 and reset_in_s is not None and reset_in_s > 0:
            self.pause(reset_in_s)

    def pause(self, seconds: float) -> None:
        """Send nothing more before `seconds` from now (a 10006, 429 or 403 said so)."""
        self._blocked_until = max(self._blocked_until, self.clock() + seconds)


class Pacer:
    """The rate windows of one API key, one per endpoint path, behind the machine's IP gate.

    Public endpoints ("" path) are not limited per key, but still wait out an IP ban.
    """

    def __init__(
        self,
        limits_per_s: Mapping[str, int] = BYBIT_LIMITS_PER_S,
        clock: Callable[[], float] = time.monotonic,
        ip_gate: IpGate = SHARED_IP_GATE,
    ) -> None:
        self._limits = limits_per_s
        self._clock = clock
        self.ip_gate = ip_gate
        self._windows: dict[str, RateWindow] = {}

    def window(self, path: str) -> RateWindow:
        if path not in self._windows:
            limit = self._limits.get(path, _DEFAULT_LIMIT_PER_S) if path else _UNLIMITED
            self._windows[path] = RateWindow(
                limit, clock=self._clock, ip_gate=self.ip_gate, calibrated=not path
            )
        return self._windows[path]
