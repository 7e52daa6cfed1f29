"""Memories that stay bounded however long the bot runs: a dict kept in the order its keys
were last put in, forgetting the oldest past a limit."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["remember"]

K = TypeVar("K")
V = TypeVar("V")


def remember(memory: dict[K, V], key: K, value: V, limit: int) -> None:
    """Put `key` in `memory` with `value` as its newest entry (moved to the end if it was
    there); past `limit` entries, the oldest is forgotten."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > limit:
        del memory[next(iter(memory))]
