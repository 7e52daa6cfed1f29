"""Prometheus metrics, served at GET /metrics."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "DECISIONS",
    "HTTP_RESPONSES",
    "ORDERS",
    "REGISTRY",
    "SIGNAL_QUEUE",
    "SIGNAL_REJECTIONS",
    "SIGNAL_TO_ORDER",
]

REGISTRY: Final = CollectorRegistry(auto_describe=True)

HTTP_RESPONSES: Final = Counter(
    "bot_http_responses", "HTTP answers by route and status", ["route", "status"], registry=REGISTRY
)
DECISIONS: Final = Counter(
    "bot_decisions",
    "Strategy and risk outcomes per intent or signal",
    ["outcome"],
    registry=REGISTRY,
)
ORDERS: Final = Counter(
    "bot_orders", "Orders by the status the executor last saw", ["status"], registry=REGISTRY
)
SIGNAL_REJECTIONS: Final = Counter(
    "bot_signal_rejections",
    "Requests and messages refused before they became signals, by source and kind",
    ["source", "kind"],
    registry=REGISTRY,
)
SIGNAL_QUEUE: Final = Gauge(
    "bot_signal_queue", "Journaled signals waiting for a worker", registry=REGISTRY
)
SIGNAL_TO_ORDER: Final = Histogram(
    "bot_signal_to_order_seconds",
    "From receipt of a signal until its order is placed and read back from the venue",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
