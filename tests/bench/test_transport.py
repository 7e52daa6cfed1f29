"""The transport benchmark in a short form: both transports place every order; timing is
never asserted."""

from __future__ import annotations

from bench.transport import TRANSPORTS, run


def test_the_transport_benchmark_places_every_call_through_both() -> None:
    report = run(calls=40, blocks=2, warmup=2)

    for name in TRANSPORTS:
        assert report[name]["calls"] == 40
        assert report[name]["cpu_mean_ms"] > 0
        assert report[name]["wall_ms"]["p50"] <= report[name]["wall_ms"]["max"]
    assert report["cpu_ratio"] > 0
