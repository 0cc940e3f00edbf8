"""Exchange, queue and routing-key names: the one place a service looks them up."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEVICES_EXCHANGE",
    "RPC_EXCHANGE",
    "TELEMETRY_EXCHANGE",
    "UPSTREAM_EXCHANGE",
    "OperatorRpc",
    "Queues",
    "RoutingKeys",
    "dead_letter_queue",
    "device_action_key",
    "device_plan_key",
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
    SCHEDULER_PLANS: Final = "scheduler.plans"
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
    # The optimizer's plans for a device, carried out by the scheduler.
    DEVICE_PLAN_PREFIX: Final = "device.plan"
    DEVICE_PLAN_ALL: Final = "device.plan.#"
    DEVICE_AVAILABILITY: Final = "device.availability"
    # The agent asks for a device's current action when it takes the device under control.
    DEVICE_RESYNC: Final = "device.resync"
    TELEMETRY_BESS: Final = "telemetry.bess"
    TELEMETRY_METER: Final = "telemetry.meter"
    # EV chargers (OCPP): meter values as EvChargerReading lists, and EvSession lists at plug-in and plug-out.
    TELEMETRY_EV_CHARGER: Final = "telemetry.ev_charger"
    TELEMETRY_EV_SESSION: Final = "telemetry.ev_session"
    TELEMETRY_ALL: Final = "telemetry.#"
    OPTIMIZER_ALL: Final = "optimizer.#"
    # An external load or PV forecast for a site (contracts.forecasts.ExternalForecastRequest).
    OPTIMIZER_FORECASTS_PUT: Final = "optimizer.forecasts.put"
    # `gridloop plans`: the optimizer's runs, and one run's plan.
    OPTIMIZER_RUNS_LIST: Final = "optimizer.runs.list"
    OPTIMIZER_RUNS_SHOW: Final = "optimizer.runs.show"
    SCHEDULER_RPC_ALL: Final = "scheduler.#"


class OperatorRpc:
    """Routing keys on ``gridloop.rpc`` behind the gateway's operator endpoints (docs/design.md §8).

    The request is the JSON of the endpoint's contract model (``grid_services.OPERATOR_REQUESTS``), the
    reply an ``OperatorReply``: the HTTP status and JSON body the gateway answers with. All start with
    ``optimizer.``, so they reach the optimizer's queue (``optimizer.rpc``, bound ``optimizer.#``).
    """

    # POST /calculate_mpc with a body: start or replace the MPC for the scope.
    CALCULATE_MPC: Final = "optimizer.calculate_mpc"
    # POST /calculate_mpc without a body: stop the MPC for the scope.
    STOP_MPC: Final = "optimizer.stop_mpc"
    COORDINATE_DAY_AHEAD: Final = "optimizer.coordinatedac"
    OPTIMIZATION_STATUS: Final = "optimizer.optimization_status"
    FLAT_TARIFF: Final = "optimizer.flattariff"
    TIME_OF_USE_TARIFF: Final = "optimizer.toutariff"
    SHIFT_CONSUMPTION_TARIFF: Final = "optimizer.shift_consumption_tariff"
    ALL: Final = (
        CALCULATE_MPC,
        STOP_MPC,
        COORDINATE_DAY_AHEAD,
        OPTIMIZATION_STATUS,
        FLAT_TARIFF,
        TIME_OF_USE_TARIFF,
        SHIFT_CONSUMPTION_TARIFF,
    )


def dead_letter_queue(queue: str) -> str:
    """The dead-letter queue that belongs to ``queue``."""
    return f"{queue}.dead-letter"


def device_action_key(device_name: str) -> str:
    """Routing key of an action for one device (dots in names would split the topic, so they are swapped)."""
    return f"{RoutingKeys.DEVICE_ACTION_PREFIX}.{device_name.replace('.', '_')}"


def device_plan_key(device_name: str) -> str:
    """Routing key of a plan for one device (dots swapped as in ``device_action_key``)."""
    return f"{RoutingKeys.DEVICE_PLAN_PREFIX}.{device_name.replace('.', '_')}"
