"""Prometheus metrics of the scheduler."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACKS_DELIVERED",
    "ACKS_PENDING",
    "ACK_FAILURES",
    "ACK_LATENCY",
    "ACTIONS_DISPATCHED",
    "COMMANDS_RECEIVED",
    "INVALID_DEVICE_METADATA",
    "PLANS_RECEIVED",
    "STALE_VERSIONS",
]

COMMANDS_RECEIVED = Counter("gridloop_scheduler_commands_total", "Command versions received, by result.", ["result"])
PLANS_RECEIVED = Counter("gridloop_scheduler_plans_total", "Device plans received, by result.", ["result"])
STALE_VERSIONS = Counter("gridloop_scheduler_stale_versions_total", "Command versions older than the stored one.")
ACTIONS_DISPATCHED = Counter("gridloop_scheduler_actions_dispatched_total", "Device actions published.", ["kind"])
ACKS_DELIVERED = Counter("gridloop_scheduler_acks_delivered_total", "Acknowledgements accepted upstream.", ["status"])
ACK_FAILURES = Counter("gridloop_scheduler_ack_failures_total", "Acknowledgement attempts that failed.", ["reason"])
INVALID_DEVICE_METADATA = Counter(
    "gridloop_scheduler_invalid_device_metadata_total",
    "Command versions for a device whose registry metadata breaks the DeviceMetadata contract (refused), by field.",
    ["field"],
)
ACKS_PENDING = Gauge("gridloop_scheduler_acks_pending", "Acknowledgements waiting in the outbox.")
ACK_LATENCY = Histogram(
    "gridloop_scheduler_ack_seconds",
    "Time from an ack entering the outbox to its acceptance upstream.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
