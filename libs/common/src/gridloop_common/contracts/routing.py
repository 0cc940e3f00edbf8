"""Exchange, queue and routing-key names: the one place a service looks them up."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEVICES_EXCHANGE",
    "RPC_EXCHANGE",
    "TELEMETRY_EXCHANGE",
    "UPSTREAM_EXCHANGE",
    "Queues",
    "RoutingKeys",
    "dead_letter_queue",
    "device_action_key",
]

# Upstream events from all three delivery modes (push, queue, poll); routing key = event_type.
UPSTREAM_EXCHANGE: Final = "gridloop.upstream"
# Scheduler -> device-agent actions and device-agent -> scheduler outcomes.
DEVICES_EXCHANGE: Final = "gridloop.devices"
# Device-agent readings -> telemetry-ingest.
TELEMETRY_EXCHANGE: Final = "gridloop.telemetry"
# Request/reply calls (gateway -> optimizer and scheduler).
RPC_EXCHANGE: Final = "gridloop.rpc"
# Where a consumer sends what it gave up on, routed by the name of the queue it came from.
DEAD_LETTER_EXCHANGE: Final = "gridloop.dead-letter"


class Queues:
    """Consumer queue names, each owned by one service."""

    SCHEDULER_UPSTREAM: Final = "scheduler.upstream"
    SCHEDULER_DEVICE_OUTCOMES: Final = "scheduler.device-outcomes"
    AGENT_DEVICE_ACTIONS: Final = "device-agent.device-actions"
    INGEST_READINGS: Final = "telemetry-ingest.readings"
    OPTIMIZER_RPC: Final = "optimizer.rpc"
    SCHEDULER_RPC: Final = "scheduler.rpc"


class RoutingKeys:
    """Routing keys and binding patterns."""

    ALL: Final = "#"
    DEVICE_ACTION_PREFIX: Final = "device.action"
    DEVICE_ACTION_ALL: Final = "device.action.#"
    DEVICE_OUTCOME: Final = "device.outcome"
    DEVICE_AVAILABILITY: Final = "device.availability"
    # The agent asks for a device's current action when it takes the device under control.
    DEVICE_RESYNC: Final = "device.resync"
    TELEMETRY_BESS: Final = "telemetry.bess"
    TELEMETRY_METER: Final = "telemetry.meter"
    TELEMETRY_ALL: Final = "telemetry.#"
    OPTIMIZER_ALL: Final = "optimizer.#"
    # An external load or PV forecast for a site (contracts.forecasts.ExternalForecastRequest).
    OPTIMIZER_FORECASTS_PUT: Final = "optimizer.forecasts.put"
    SCHEDULER_RPC_ALL: Final = "scheduler.#"


def dead_letter_queue(queue: str) -> str:
    """The dead-letter queue that belongs to ``queue``."""
    return f"{queue}.dead-letter"


def device_action_key(device_name: str) -> str:
    """Routing key of an action for one device (dots in names would split the topic, so they are swapped)."""
    return f"{RoutingKeys.DEVICE_ACTION_PREFIX}.{device_name.replace('.', '_')}"
