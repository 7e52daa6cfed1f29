"""Readiness: whether the bot can take a signal and trade it now, and if not, why.

`/healthz` answers 503 with the failed checks named when any of these fails:

- `journal`: a real write to the journal (a header update in its own transaction) within
  `_JOURNAL_PROBE_S`: a locked, read-only or full journal cannot take a signal;
- `keys`: a key the venue refused (its strategies are stopped);
- `venue`: a key's REST requests have failed for `venue.unready_after_s` seconds in a row,
  or its private stream has been down that long, or the venue has stopped this address
  (a 403 ban, 10 minutes: no request may leave, for any key);
- `signal_sources`: a source that cannot receive (the MQTT broker is down).

Liveness (`/livez`) only says the process and its event loop answer: a supervisor restarts
a bot that is not live, never one that is merely not ready (a restart does not bring a
venue back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from bot.audit import VenueRequest
from bot.journal import Journal

__all__ = ["Readiness", "VenueHealth", "body_of"]

_JOURNAL_PROBE_S: Final = 2.0


class VenueHealth:
    """Per key, since when its REST requests have been failing (one success clears it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failing_since: dict[str, float] = {}

    def observe(self, request: VenueRequest) -> None:
        """A venue observer (on the venue's threads): any answer of the venue's own, even a
        refusal, shows it reachable; no answer (a timeout, a refused connection) or a 5xx
        does not."""
        answered = request.error is None and (request.http_status or 200) < 500
        if answered:
            self._failing_since.pop(request.key, None)
        else:
            self._failing_since.setdefault(request.key, self._clock())

    def failing_for(self, key_name: str) -> float:
        """Seconds the key's requests have failed in a row (0 while they succeed)."""
        since = self._failing_since.get(key_name)
        return 0.0 if since is None else self._clock() - since


@dataclass(frozen=True)
class _Check:
    ok: bool
    reason: str = ""


class Readiness:
    """Runs the checks; `problems()` says what is wrong, empty when ready."""

    def __init__(
        self,
        journal: Journal,
        keys: Iterable[str],
        disabled: Callable[[str], str | None],
        venue_health: VenueHealth,
        stream_down_for: Callable[[str], float],
        unready_after_s: float,
        address_paused_for: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """`disabled(key)` is why the venue refused a key (or None); `stream_down_for(key)`
        how long its private stream has been down (0 while live); `address_paused_for()` how
        long the venue still refuses this address (0 when it does not)."""
        self._journal = journal
        self._keys = tuple(keys)
        self._disabled = disabled
        self._venue_health = venue_health
        self._stream_down_for = stream_down_for
        self._unready_after_s = unready_after_s
        self._address_paused_for = address_paused_for
        self._probe: asyncio.Future[None] | None = None

    async def checks(self, sources: Mapping[str, Mapping[str, Any]]) -> dict[str, _Check]:
        """Every check by name; `sources` is each signal source's own health."""
        return {
            "journal": await self._journal_writable(),
            "keys": self._keys_in_service(),
            "venue": self._venue_reachable(),
            "signal_sources": _sources_ready(sources),
        }

    async def _journal_writable(self) -> _Check:
        # One probe at a time: a stuck one is awaited again, never queued behind.
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._journal.call(self._journal.probe))
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), _JOURNAL_PROBE_S)
        except TimeoutError:
            return _Check(False, f"no write within {_JOURNAL_PROBE_S:g} s (locked or stalled)")
        except Exception as exc:  # sqlite3.Error, OSError: the journal's own words
            return _Check(False, f"cannot write: {exc}")
        return _Check(True)

    def _keys_in_service(self) -> _Check:
        refused = [f"{key}: {why}" for key in self._keys if (why := self._disabled(key))]
        return _Check(not refused, "; ".join(refused))

    def _venue_reachable(self) -> _Check:
        limit = self._unready_after_s
        problems = []
        paused = self._address_paused_for()
        if paused > 0:
            problems.append(
                f"the venue refuses this address (IP limit) for {paused:.0f} s more: "
                "no request leaves"
            )
        for key in self._keys:
            failing = self._venue_health.failing_for(key)
            if failing >= limit:
                problems.append(f"{key}: REST requests failing for {failing:.0f} s")
            down = self._stream_down_for(key)
            if down >= limit:
                problems.append(f"{key}: private stream down for {down:.0f} s")
        return _Check(not problems, "; ".join(problems))


def _sources_ready(sources: Mapping[str, Mapping[str, Any]]) -> _Check:
    down = [name for name, health in sources.items() if not health.get("ready", False)]
    return _Check(not down, "; ".join(f"{name} not ready" for name in down))


def body_of(checks: Mapping[str, _Check]) -> dict[str, Any]:
    """The readiness part of /healthz: `ready`, each check's verdict and the problems."""
    return {
        "live": True,
        "ready": all(check.ok for check in checks.values()),
        "checks": {name: "ok" if check.ok else check.reason for name, check in checks.items()},
        "problems": [f"{name}: {check.reason}" for name, check in checks.items() if not check.ok],
    }
