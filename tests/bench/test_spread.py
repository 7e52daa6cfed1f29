"""The one summary of durations every benchmark reports (`bench.common.Spread`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.common import Spread, latency_ms


def test_nearest_rank_of_one_to_a_hundred_milliseconds() -> None:
    spread = Spread.of([ms * 1_000_000 for ms in range(100, 0, -1)], 1e6)

    assert spread == Spread(n=100, p50=50.0, p99=99.0, max=100.0, mean=50.5)
    assert spread.named("_ms") == {
        "n": 100,
        "p50_ms": 50.0,
        "p99_ms": 99.0,
        "max_ms": 100.0,
        "mean_ms": 50.5,
    }


def test_no_samples_has_no_spread() -> None:
    assert Spread.of([], 1e6) is None
    assert latency_ms([]) == {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1))
def test_each_rank_is_a_sample_and_they_are_in_order(samples: list[int]) -> None:
    spread = Spread.of(samples, 1e3)

    assert spread is not None and spread.n == len(samples)
    in_units = {round(sample / 1e3, 3) for sample in samples}
    assert {spread.p50, spread.p99, spread.max} <= in_units
    assert spread.p50 <= spread.p99 <= spread.max == round(max(samples) / 1e3, 3)
    assert round(min(samples) / 1e3, 3) <= spread.mean <= spread.max
