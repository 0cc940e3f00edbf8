"""Prometheus metrics of the messaging layer (one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["CONSUMED", "HANDLER_SECONDS", "PUBLISHED", "PUBLISH_FAILURES", "PUBLISH_SECONDS"]

PUBLISHED = Counter("gridloop_messages_published_total", "Messages confirmed by the broker.", ["exchange"])
PUBLISH_FAILURES = Counter(
    "gridloop_publish_failures_total", "Publishes the broker did not confirm.", ["exchange", "reason"]
)
PUBLISH_SECONDS = Histogram(
    "gridloop_publish_seconds",
    "Time from publish to broker confirm.",
    ["exchange"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONSUMED = Counter(
    "gridloop_messages_consumed_total",
    "Messages handled, by outcome (ack, retry, dead_letter, requeued_on_shutdown).",
    ["queue", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "gridloop_handler_seconds",
    "Time a handler took.",
    ["queue"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
