"""Message handlers of the device agent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from device_agent.chargers.central_system import CentralSystem, ChargerLookup
from device_agent.fleet import Fleet
from gridloop_common.clock import Clock
from gridloop_common.contracts import DeviceAction, DeviceOutcome, routing
from gridloop_common.messaging import Delivery, Publisher, model_handler

__all__ = ["UNKNOWN_DEVICE_WAIT_S", "device_action_handler", "unknown_device_wait_s"]

logger = logging.getLogger(__name__)

# How long an action for a device the agent does not drive waits for the registry to name it before it is
# refused: registrations reach the agent within a second (LISTEN/NOTIFY), so this covers a notice that was
# lost with the LISTEN connection, and an unknown device's refusal comes no later than this.
UNKNOWN_DEVICE_WAIT_S = 10.0


def unknown_device_wait_s(issued_at: datetime, valid_until: datetime | None, *, now: datetime) -> float:
    """How long to wait for an unknown device: until UNKNOWN_DEVICE_WAIT_S after the action was issued, never
    past its validity. Counted from the issue, not the receipt: a backlog of old actions for devices that never
    come (removed ones, another agent's) must not hold the consumer's prefetch for 10 s each and delay the rest."""
    deadline = issued_at + timedelta(seconds=UNKNOWN_DEVICE_WAIT_S)
    if valid_until is not None:
        deadline = min(deadline, valid_until)
    return max(0.0, min(UNKNOWN_DEVICE_WAIT_S, (deadline - now).total_seconds()))


def device_action_handler(
    fleet: Fleet,
    publisher: Publisher,
    clock: Clock,
    chargers: tuple[CentralSystem, ChargerLookup] | None = None,
) -> Callable[[Delivery], Awaitable[None]]:
    """Apply an action on its device and publish the outcome; ack only after the outcome is confirmed.

    ``chargers``: the OCPP central system and the registry lookup of a charger by name; an action for an EV
    charger goes to its connection (a battery's goes to its control loop).
    """

    async def handle(action: DeviceAction, delivery: Delivery) -> None:
        await asyncio.wait_for(fleet.loaded.wait(), 30)
        controller = fleet.control_loop(action.device_name)
        if controller is None and chargers is not None:
            central_system, charger_named = chargers
            charger_outcome = await central_system.carry_out(action, charger_named)
            if charger_outcome is not None:
                await _publish(charger_outcome, action)
                return
        if controller is None and fleet.unusable_reason(action.device_name) is None:
            # Registered a moment ago (the action overtook the registry's change notice)? Wait for it.
            wait_s = unknown_device_wait_s(action.issued_at, action.valid_until, now=clock.now())
            logger.info(
                "action waits for its device's registration", extra={"device": action.device_name, "wait_s": wait_s}
            )
            controller = await fleet.wait_for_control_loop(action.device_name, timeout_s=wait_s)
        if controller is None:
            outcome: DeviceOutcome | None = DeviceOutcome(
                action_id=action.action_id,
                command_id=action.command_id,
                device_name=action.device_name,
                applied=False,
                reason=fleet.unusable_reason(action.device_name)
                or f"device {action.device_name!r} is not driven by this agent "
                "(not an active battery with a modbus address in the registry)",
                observed_at=clock.now(),
            )
        else:
            outcome = await controller.submit(action)
        if outcome is None:
            return  # superseded by a newer action before it was applied
        await _publish(outcome, action)

    async def _publish(outcome: DeviceOutcome, action: DeviceAction) -> None:
        await publisher.publish(
            exchange=routing.DEVICES_EXCHANGE,
            routing_key=routing.RoutingKeys.DEVICE_OUTCOME,
            body=outcome,
            message_id=str(action.action_id),
        )
        logger.info(
            "action applied" if outcome.applied else "action failed",
            extra={
                "device": action.device_name,
                "mode": str(action.mode),
                "setpoint_w": action.setpoint_w,
                "applied_setpoint_w": outcome.applied_setpoint_w,
                "reason": outcome.reason,
            },
        )

    return model_handler(DeviceAction, handle)
