"""orderLinkId: deterministic, unique per (strategy, source, signal, leg), within Bybit's rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.execution.ids import ORDER_LINK_ID_PATTERN, order_link_id, strategies_named_by

strategy_names = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
sources = st.from_regex(r"[a-z0-9_]{1,32}", fullmatch=True)
signal_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
legs = st.integers(min_value=0, max_value=99)
keys = st.tuples(strategy_names, sources, signal_ids, legs)


@given(key=keys)
def test_within_bybit_rules_and_deterministic(key: tuple[str, str, str, int]) -> None:
    link_id = order_link_id(*key)

    assert ORDER_LINK_ID_PATTERN.fullmatch(link_id)
    assert len(link_id) <= 36
    assert order_link_id(*key) == link_id


@given(first=keys, second=keys)
def test_distinct_inputs_give_distinct_ids(
    first: tuple[str, str, str, int], second: tuple[str, str, str, int]
) -> None:
    if first != second:
        assert order_link_id(*first) != order_link_id(*second)


def test_readable_prefix_names_strategy_and_leg() -> None:
    assert order_link_id("follow", "voiceofchain", "abc", 2).startswith("follow-2-")


@pytest.mark.parametrize("leg", [-1, 100])
def test_leg_out_of_range_is_refused(leg: int) -> None:
    with pytest.raises(ValueError, match="leg"):
        order_link_id("follow", "voiceofchain", "abc", leg)


@given(
    strategy=st.sampled_from(["follow", "ladder", "fol-low", "a_very_long_strategy_name"]),
    signal_id=st.text(min_size=1, max_size=64),
    leg=st.integers(min_value=0, max_value=99),
)
def test_an_order_link_id_names_the_strategies_that_could_have_made_it(
    strategy: str, signal_id: str, leg: int
) -> None:
    configured = ["follow", "ladder", "fol-low", "a_very_long_strategy_name", "other"]

    named = strategies_named_by(order_link_id(strategy, "voiceofchain", signal_id, leg), configured)

    assert strategy in named
    assert "other" not in named


@pytest.mark.parametrize(
    "link_id", ["", "follow", "follow-0", "follow-0-short", "follow-100-" + "a" * 24, "manual-1"]
)
def test_an_order_link_id_of_another_shape_names_no_strategy(link_id: str) -> None:
    assert strategies_named_by(link_id, ["follow", "manual"]) == []
