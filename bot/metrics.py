"""Prometheus metrics, served at GET /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

__all__ = [
    "HTTP_CONNECTIONS_REFUSED",
    "HTTP_RESPONSES",
    "LAST_SIGNAL",
    "PRICE_STREAM_LIVE",
    "PRICE_STREAM_RECONNECTS",
    "REGISTRY",
    "SIGNALS",
    "SIGNAL_QUEUE",
    "SIGNAL_REJECTIONS",
    "SIGNAL_TO_ORDER",
    "STREAM_LIVE",
    "STREAM_RECONNECTS",
    "VENUE_LATENCY",
    "VENUE_RATE_LIMIT",
    "VENUE_RATE_LIMIT_REMAINING",
    "VENUE_REQUESTS",
    "observe_venue_request",
]

if TYPE_CHECKING:
    from bot.audit import VenueRequest

# A `_created` series beside every counter only adds noise to dashboards.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # CPU, memory, open files of the bot's process
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

HTTP_RESPONSES: Final = Counter(
    "bot_http_responses", "HTTP answers by route and status", ["route", "status"], registry=REGISTRY
)
SIGNALS: Final = Counter(
    "bot_signals",
    "Signals that reached the journal, by source and outcome (accepted, duplicate)",
    ["source", "outcome"],
    registry=REGISTRY,
)
LAST_SIGNAL: Final = Gauge(
    "bot_last_signal_timestamp_seconds",
    "When each source's last signal was accepted (unix time)",
    ["source"],
    registry=REGISTRY,
)
STREAM_LIVE: Final = Gauge(
    "bot_account_stream_live",
    "1 while the key's private stream is connected with its gap closed, else 0",
    ["key"],
    registry=REGISTRY,
)
STREAM_RECONNECTS: Final = Counter(
    "bot_account_stream_reconnects",
    "Private-stream connections lost and opened again, per key",
    ["key"],
    registry=REGISTRY,
)
PRICE_STREAM_LIVE: Final = Gauge(
    "bot_price_stream_live",
    "1 while the environment's public ticker stream is connected, else 0 (prices by REST)",
    ["environment"],
    registry=REGISTRY,
)
PRICE_STREAM_RECONNECTS: Final = Counter(
    "bot_price_stream_reconnects",
    "Public ticker stream connections lost and opened again, per environment",
    ["environment"],
    registry=REGISTRY,
)
HTTP_CONNECTIONS_REFUSED: Final = Counter(
    "bot_http_connections_refused",
    "HTTP connections closed for room, http.max_connections being open: the one waiting "
    "longest for a request, else the new one",
    registry=REGISTRY,
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
VENUE_LATENCY: Final = Histogram(
    "bot_venue_request_latency_seconds",
    "Signed requests to the venue, from send to answer (or failure), per endpoint and key",
    ["endpoint", "key"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
VENUE_REQUESTS: Final = Counter(
    "bot_venue_requests",
    "Signed requests to the venue by endpoint, key and retCode (`http <status>` or the "
    "error's class when the answer had none)",
    ["endpoint", "key", "ret_code"],
    registry=REGISTRY,
)
VENUE_PACING_WAIT: Final = Counter(
    "bot_venue_pacing_wait_seconds",
    "Time signed requests waited for room before leaving, by the limit that held them: ip "
    "(the address's 600 requests in 5 s, or a ban), key (the key's limit on the endpoint) or "
    "calibrating (one at a time until the venue has said how much of its window is used)",
    ["limit"],
    registry=REGISTRY,
)
VENUE_RATE_LIMIT: Final = Gauge(
    "bot_venue_rate_limit",
    "Requests the venue allows per window on the endpoint for the key (X-Bapi-Limit)",
    ["endpoint", "key"],
    registry=REGISTRY,
)
VENUE_RATE_LIMIT_REMAINING: Final = Gauge(
    "bot_venue_rate_limit_remaining",
    "Requests left in the current window on the endpoint for the key, as of its last answer "
    "(X-Bapi-Limit-Status): the rate-limit headroom",
    ["endpoint", "key"],
    registry=REGISTRY,
)


def observe_venue_request(record: VenueRequest) -> None:
    """Count one signed request, its latency and the headroom its answer reported (called
    from the venue's threads)."""
    VENUE_LATENCY.labels(record.endpoint, record.key).observe(record.latency_ms / 1000)
    VENUE_REQUESTS.labels(record.endpoint, record.key, record.outcome).inc()
    if record.limit is not None:
        VENUE_RATE_LIMIT.labels(record.endpoint, record.key).set(record.limit)
    if record.limit_remaining is not None:
        VENUE_RATE_LIMIT_REMAINING.labels(record.endpoint, record.key).set(record.limit_remaining)
