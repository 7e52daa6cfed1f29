"""Waiting briefly for work that may take long, and letting it go on: what a kill switch does
with its journal writes.

A journal write takes milliseconds, but one that another program's lock holds (a backup
tool's `BEGIN IMMEDIATE`) waits SQLite's busy timeout (2 s), queued behind others that wait
as long. A halt, and the cancels it sends, must not wait that long: `bot halt` gives up on its
answer after 10 s, and a resting entry would fill meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

__all__ = ["JOURNAL_WAIT_S", "ended_within"]

#: How long a halt (its command's record, its state's, each of its cancels') waits for a
#: journal write before it goes on without it.
JOURNAL_WAIT_S: Final = 1.0

# What outlasted its wait, held until it ends (the event loop keeps only weak references).
_GOING_ON: set[asyncio.Future[Any]] = set()


async def ended_within(work: asyncio.Future[Any], wait_s: float = JOURNAL_WAIT_S) -> bool:
    """Whether `work` ended within `wait_s` (its outcome is then the caller's to take); if not,
    it goes on, held until it ends, its outcome retrieved: a failure is for whoever still
    awaits it to tell (or the caller has told already that it did not end in time)."""
    done, _ = await asyncio.wait({work}, timeout=wait_s)
    if done:
        return True
    _GOING_ON.add(work)
    work.add_done_callback(_GOING_ON.discard)
    work.add_done_callback(lambda ended: ended.cancelled() or ended.exception())
    return False
