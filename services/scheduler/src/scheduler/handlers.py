"""Message handlers of the scheduler: the I/O around the pure planning code."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from pydantic import ValidationError

from gridloop_common.clock import Clock
from gridloop_common.contracts import DeviceAvailability, DeviceOutcome, DevicePlan, DeviceResyncRequest, UpstreamEvent
from gridloop_common.contracts.documents import RefusedDocument, load_document
from gridloop_common.contracts.routing import RoutingKeys
from gridloop_common.messaging import Delivery, PoisonMessage, RetryableError
from scheduler import lifecycle
from scheduler.commands import CommandReceiver
from scheduler.dispatch import Dispatcher
from scheduler.lifecycle import PlanResult, StoreResult
from scheduler.metrics import PLANS_RECEIVED
from scheduler.repository import CommandRepository, EventRepository, RegistryUnavailable, UpstreamRecord

__all__ = ["device_plan_handler", "device_report_handler", "record_outcome", "rpc_server", "upstream_event_handler"]

logger = logging.getLogger(__name__)


def _validation_summary(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or 'body'}: {detail['msg']}" for detail in error.errors()[:5]
    )


# PostgreSQL errors that say the data itself can never be stored, however often it is retried: class 22
# (data exception: 22P02 bad jsonb text such as NaN, 22P05 \u0000 in jsonb, 22021 NUL in text, 22003, and
# asyncpg's own "invalid input for query argument", e.g. a lone surrogate) and class 54 (program limit
# exceeded: a value too large or too deeply nested). Anything else (connections, locks, a missing table)
# may pass on a later attempt and is retried.
_UNSTORABLE = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)
_REASON_LIMIT = 500


def upstream_event_handler(
    events: EventRepository, receiver: CommandReceiver, commands: CommandRepository, *, max_envelope_bytes: int
) -> Callable[[Delivery], Awaitable[None]]:
    """Store every upstream envelope once; apply command events to the lifecycle.

    What can never be stored (too large, JSON that jsonb refuses, an invalid command without a usable id)
    is dead-lettered at once with the reason and leaves nothing behind, except a FAILED acknowledgement
    for a command whose id can be read, so the upstream learns of the refusal.
    """

    async def handle(delivery: Delivery) -> None:
        if len(delivery.body) > max_envelope_bytes:
            # Not parsed at all: reading a command id out of a giant body is the cost the limit avoids.
            raise PoisonMessage(
                f"envelope of {len(delivery.body)} bytes is over the {max_envelope_bytes}-byte limit"
                " (GRIDLOOP_UPSTREAM_MAX_ENVELOPE_BYTES); not stored"
            )
        try:
            envelope = load_document(delivery.body)
        except RefusedDocument as refused:
            reason = f"envelope cannot be stored: {refused}"[:_REASON_LIMIT]
            await _fail_command(commands, _lenient_command_id(delivery.body), reason)
            raise PoisonMessage(reason) from refused
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
        command_id = _command_id(envelope) if event.event_type.startswith("command.") else None
        try:
            await _store_and_apply(events, receiver, commands, event, record, command_id=command_id)
        except _UNSTORABLE as error:
            # One line (the DETAIL comes on a line of its own), short enough for an acknowledgement's reason.
            problem = f"PostgreSQL cannot store this {event.event_type} event ({error.sqlstate}): {error}"
            reason = " ".join(problem.split())[:_REASON_LIMIT]
            await _fail_command(commands, command_id, reason)
            raise PoisonMessage(reason) from error

    return handle


async def _store_and_apply(
    events: EventRepository,
    receiver: CommandReceiver,
    commands: CommandRepository,
    event: UpstreamEvent,
    record: UpstreamRecord,
    *,
    command_id: uuid.UUID | None,
) -> None:
    command = None
    if event.event_type.startswith("command."):
        try:
            command = event.command()
        except ValidationError as error:
            summary = _validation_summary(error)
            if command_id is None:
                # Nobody to acknowledge and nothing worth keeping: dead-lettered, not stored.
                raise PoisonMessage(f"invalid command without a usable id: {summary}") from error
            if await events.record_event(record):
                await _fail_command(commands, command_id, f"invalid command: {summary}")
            return
    if command is None:
        first_time = await events.record_event(record)
        logger.info(
            "upstream event stored" if first_time else "upstream event already stored",
            extra={"event_type": event.event_type, "event_key": record.event_key},
        )
        return
    # Applying a command is idempotent by (id, updated_at), so a redelivery is safe to re-apply. The
    # event is stored by the same statement that reads what the decision needs.
    try:
        await receiver.receive(
            command, event_type=event.event_type, correlation_id=record.correlation_id, record=record
        )
    except RegistryUnavailable as error:
        raise RetryableError(str(error)) from error


def _command_id(envelope: dict[str, Any]) -> uuid.UUID | None:
    """The command id of a command envelope, if it can be read (even when the rest of the command cannot)."""
    event_object = envelope.get("event_object")
    raw_id = event_object.get("id") if isinstance(event_object, dict) else None
    if not isinstance(raw_id, str):
        return None
    try:
        return uuid.UUID(raw_id)
    except ValueError:
        return None


def _lenient_command_id(body: bytes) -> uuid.UUID | None:
    """The command id of a body the strict loader refused, read as leniently as Python's json allows."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):  # not JSON at all, a giant integer, deep nesting
        return None
    if not isinstance(envelope, dict) or not str(envelope.get("event_type", "")).startswith("command."):
        return None
    return _command_id(envelope)


async def _fail_command(commands: CommandRepository, command_id: uuid.UUID | None, reason: str) -> None:
    """Queue a FAILED acknowledgement with ``reason`` for a command the scheduler refuses (when it has an id)."""
    if command_id is None:
        return
    await commands.store(lifecycle.plan_refusal(command_id, reason))
    logger.warning("command refused", extra={"command_id": str(command_id), "reason": reason})


async def record_outcome(commands: CommandRepository, outcome: DeviceOutcome) -> bool:
    """Store an agent's outcome once (lifecycle.plan_outcome); False for a redelivery, which changes nothing."""
    return await commands.store(lifecycle.plan_outcome(outcome)) is StoreResult.APPLIED


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
        if await record_outcome(commands, outcome):
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


_PLAN_ATTEMPTS = 3


def device_plan_handler(commands: CommandRepository, clock: Clock) -> Callable[[Delivery], Awaitable[None]]:
    """Carry out the optimizer's plans: each device plan's steps become controls of source ``plan``.

    An invalid plan, or one for a device that cannot be planned, is dead-lettered with the reason.
    """

    async def handle(delivery: Delivery) -> None:
        try:
            plan = DevicePlan.model_validate(load_document(delivery.body))
        except RefusedDocument as refused:
            raise PoisonMessage(f"device plan cannot be read: {refused}") from refused
        except ValidationError as error:
            raise PoisonMessage(f"invalid device plan: {_validation_summary(error)}") from error
        for _ in range(_PLAN_ATTEMPTS):
            try:
                seen = await commands.look_plan(plan)
            except RegistryUnavailable as error:
                raise RetryableError(str(error)) from error
            result, writes, reason = lifecycle.plan_device_plan(plan, seen, now=clock.now())
            if writes is None:
                break
            stored = await commands.store(writes)
            if stored is StoreResult.DUPLICATE:
                result = PlanResult.DUPLICATE
            if stored is not StoreResult.CHANGED:
                break
        else:
            raise RetryableError(
                f"plans for device {plan.device_name!r} kept arriving while plan {plan.plan_id} was stored"
            )
        PLANS_RECEIVED.labels(result).inc()
        context = {
            "device_id": plan.device_name,
            "plan_id": str(plan.plan_id),
            "run_id": str(plan.run_id),
            "kind": str(plan.kind),
            "steps": len(plan.steps),
            "result": str(result),
        }
        if result is PlanResult.REFUSED:
            logger.warning("device plan refused", extra={**context, "reason": reason})
            raise PoisonMessage(f"plan {plan.plan_id} refused: {reason}")
        logger.info(
            "device plan " + ("stored" if result is PlanResult.APPLIED else str(result)),
            extra={**context, "reason": reason},
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
