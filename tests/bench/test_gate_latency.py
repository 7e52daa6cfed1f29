"""The gate benchmark in a short form: it runs and decides; timing is never asserted."""

from __future__ import annotations

from bench.gate_latency import run


def test_the_gate_benchmark_decides_every_intent_and_approves_some() -> None:
    report = run(decisions=500)

    gate = report["gate"]
    assert isinstance(gate, dict) and gate["n"] == 500
    assert 0 < float(str(report["approved_share"])) < 1
