"""Message handlers of the scheduler: the I/O around the pure planning code."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from gridloop_common.contracts import DeviceAvailability, DeviceOutcome, DeviceResyncRequest, UpstreamEvent
from gridloop_common.contracts.routing import RoutingKeys
from gridloop_common.messaging import Delivery, PoisonMessage, RetryableError
from scheduler.commands import CommandReceiver
from scheduler.dispatch import Dispatcher
from scheduler.repository import CommandRepository, EventRepository, RegistryUnavailable, UpstreamRecord

__all__ = ["device_report_handler", "rpc_server", "upstream_event_handler"]

logger = logging.getLogger(__name__)


def _validation_summary(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or 'body'}: {detail['msg']}" for detail in error.errors()[:5]
    )


def upstream_event_handler(
    events: EventRepository, receiver: CommandReceiver, commands: CommandRepository
) -> Callable[[Delivery], Awaitable[None]]:
    """Store every upstream envelope once; apply command events to the lifecycle."""

    async def handle(delivery: Delivery) -> None:
        envelope = delivery.json()
        if not isinstance(envelope, dict):
            raise PoisonMessage("envelope must be a JSON object")
        try:
            event = UpstreamEvent.model_validate(envelope)
        except ValidationError as error:
            raise PoisonMessage(f"invalid envelope: {_validation_summary(error)}") from error
        event_key = delivery.message_id or hashlib.sha256(delivery.body).hexdigest()
        trace = str(delivery.headers.get("x-correlation-id") or "") or None
        record = UpstreamRecord(
            event_key=event_key, event_type=event.event_type, envelope=envelope, correlation_id=trace
        )
        command = None
        if event.event_type.startswith("command."):
            try:
                command = event.command()
            except ValidationError as error:
                if await events.record_event(record):
                    await _refuse_invalid_command(commands, envelope, error)
                return
        if command is None:
            first_time = await events.record_event(record)
            logger.info(
                "upstream event stored" if first_time else "upstream event already stored",
                extra={"event_type": event.event_type, "event_key": event_key},
            )
            return
        # Applying a command is idempotent by (id, updated_at), so a redelivery is safe to re-apply. The
        # event is stored by the same statement that reads what the decision needs.
        try:
            await receiver.receive(command, event_type=event.event_type, correlation_id=trace, record=record)
        except RegistryUnavailable as error:
            raise RetryableError(str(error)) from error

    return handle


async def _refuse_invalid_command(
    commands: CommandRepository, envelope: dict[str, Any], error: ValidationError
) -> None:
    """An authentic command we cannot parse: FAILED upstream when its id is readable, else poison."""
    event_object = envelope.get("event_object")
    raw_id = event_object.get("id") if isinstance(event_object, dict) else None
    try:
        command_id = uuid.UUID(str(raw_id))
    except ValueError:
        raise PoisonMessage(f"invalid command without a usable id: {_validation_summary(error)}") from error
    reason = f"invalid command: {_validation_summary(error)}"
    async with commands.pool.acquire() as connection, connection.transaction():
        await commands.history(connection, command_id, "failed", reason)
        await commands.enqueue_ack(connection, command_id=command_id, device_status="FAILED", reason=reason)
    logger.warning("invalid command refused", extra={"command_id": str(command_id), "reason": reason})


def device_report_handler(commands: CommandRepository, dispatcher: Dispatcher) -> Callable[[Delivery], Awaitable[None]]:
    """Record the device-agent's outcomes and availability reports; answer its resync requests."""

    async def handle(delivery: Delivery) -> None:
        if delivery.routing_key == RoutingKeys.DEVICE_RESYNC:
            await dispatcher.resync(DeviceResyncRequest.model_validate_json(delivery.body))
            return
        if delivery.routing_key == RoutingKeys.DEVICE_AVAILABILITY:
            availability = DeviceAvailability.model_validate_json(delivery.body)
            await commands.record_availability(availability)
            return
        outcome = DeviceOutcome.model_validate_json(delivery.body)
        if await commands.record_outcome(outcome):
            logger.info(
                "device outcome",
                extra={
                    "device_id": outcome.device_name,
                    "command_id": str(outcome.command_id) if outcome.command_id else None,
                    "applied": outcome.applied,
                    "reason": outcome.reason,
                    "applied_setpoint_w": outcome.applied_setpoint_w,
                },
            )

    return handle


def rpc_server(commands: CommandRepository) -> Callable[[Delivery], Awaitable[bytes]]:
    """Answer `gridloop commands` requests: scheduler.commands.list and scheduler.commands.show."""

    async def serve(delivery: Delivery) -> bytes:
        request = delivery.json() if delivery.body else {}
        if not isinstance(request, dict):
            raise PoisonMessage("request must be a JSON object")
        if delivery.routing_key == "scheduler.commands.list":
            limit = request.get("limit", 50)
            if not isinstance(limit, int) or not 1 <= limit <= 1000:
                raise PoisonMessage("limit must be an integer from 1 to 1000")
            return json.dumps({"commands": await commands.list_commands(limit=limit)}).encode()
        if delivery.routing_key == "scheduler.commands.show":
            try:
                command_id = uuid.UUID(str(request.get("command_id")))
            except ValueError as error:
                raise PoisonMessage("command_id must be a UUID") from error
            found = await commands.show_command(command_id)
            if found is None:
                raise PoisonMessage(f"no command {command_id}")
            return json.dumps(found).encode()
        raise PoisonMessage(f"unknown scheduler request {delivery.routing_key!r}")

    return serve
