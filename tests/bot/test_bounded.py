"""The bounded memory every once-per-id warning and cache of the bot keeps."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st

from bot.bounded import remember


def test_the_oldest_key_is_forgotten_and_a_key_put_again_is_the_newest() -> None:
    memory: OrderedDict[str, int] = OrderedDict()
    for key, value in (("a", 1), ("b", 2), ("a", 3), ("c", 4)):
        remember(memory, key, value, limit=2)

    assert memory == {"a": 3, "c": 4}  # "b" was the oldest once "a" was put again
    assert list(memory) == ["a", "c"]


@given(
    puts=st.lists(st.tuples(st.integers(0, 20), st.integers()), max_size=200),
    limit=st.integers(1, 10),
)
def test_the_memory_holds_the_last_keys_put_with_their_last_values(
    puts: list[tuple[int, int]], limit: int
) -> None:
    memory: OrderedDict[int, int] = OrderedDict()
    for key, value in puts:
        remember(memory, key, value, limit)

    newest_first: dict[int, int] = {}
    for key, value in reversed(puts):
        newest_first.setdefault(key, value)
    kept = list(newest_first.items())[:limit]
    assert list(memory.items()) == kept[::-1]
