"""Pinning the bot to CPUs (`cpus` in the configuration; Linux).

The bot is one Python process: its event loop, the journal's thread, a venue thread per key
and pybit's stream threads take turns at one interpreter lock. Spread over several cores,
every hand-over of that lock wakes a thread on another core, which then often finds the lock
taken again and sleeps: CPU spent on moving the lock, not on work. Kept on one core, a
thread runs until it blocks and the next one takes over. Measured with 20 keys at 50
signals/s (bench/intake.py; docs/performance.md): 13-24 % less CPU per signal and
a shorter tail.

`cpus = []` (the default) leaves the scheduler free: two bots pinned to the same CPU would
share one core while another idles, so which CPU a bot gets is the operator's choice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bot.config import ConfigError
from bot.logs import logger

__all__ = ["pin"]

_TASKS = Path("/proc/self/task")


def pin(cpus: Sequence[int]) -> None:
    """Run every thread of this process, and every thread it starts later, on `cpus`; an
    empty `cpus` changes nothing. Raises `ConfigError` (one line) when a CPU is not one
    this process may use, or the platform cannot pin."""
    if not cpus:
        return
    wanted = set(cpus)
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("cpus: pinning to CPUs needs Linux; remove cpus (or set cpus = [])")
    allowed = os.sched_getaffinity(0)
    missing = wanted - allowed
    if missing:
        raise ConfigError(
            f"cpus = {sorted(wanted)}: CPU {', '.join(map(str, sorted(missing)))} is not one "
            f"this process may use ({_ranges(allowed)}); set cpus to some of those, or [] to "
            "let the system choose"
        )
    # Threads started from now on inherit their starter's CPUs; those already running are
    # set one by one (a thread that ended meanwhile has nothing to set).
    for task in sorted(_TASKS.iterdir()) if _TASKS.is_dir() else [Path("0")]:
        try:
            os.sched_setaffinity(int(task.name), wanted)
        except ProcessLookupError:
            continue
    logger.info("pinned to {cpus}", cpus=_ranges(wanted))


def _ranges(cpus: set[int]) -> str:
    """`{0, 1, 2, 5}` -> "CPUs 0-2, 5"."""
    ordered = sorted(cpus)
    spans: list[list[int]] = []
    for cpu in ordered:
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"CPU{'s' if len(ordered) > 1 else ''} {text}"
