"""The bounded memory every once-per-id warning and cache of the bot keeps."""

from __future__ import annotations

from bot.bounded import remember


def test_the_oldest_key_is_forgotten_and_a_key_put_again_is_the_newest() -> None:
    memory: dict[str, int] = {}
    for key, value in (("a", 1), ("b", 2), ("a", 3), ("c", 4)):
        remember(memory, key, value, limit=2)

    assert memory == {"a": 3, "c": 4}  # "b" was the oldest once "a" was put again
    assert list(memory) == ["a", "c"]
