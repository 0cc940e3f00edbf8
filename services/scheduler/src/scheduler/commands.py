"""Receiving a command version: look, decide (scheduler.lifecycle), store the plan; the OK or FAILED is in it."""

from __future__ import annotations

import logging

import asyncpg

from gridloop_common.clock import Clock
from gridloop_common.contracts import Command
from gridloop_common.messaging import RetryableError
from scheduler import lifecycle
from scheduler.lifecycle import ReceiveResult, StoreResult
from scheduler.metrics import COMMANDS_RECEIVED, INVALID_DEVICE_METADATA, STALE_VERSIONS
from scheduler.repository import CommandRepository, UpstreamRecord

__all__ = ["CommandReceiver"]

logger = logging.getLogger(__name__)

_LOCKED_ATTEMPTS = 3


class CommandReceiver:
    """Applies one received command version: one read to decide on, one atomic write of the decision."""

    def __init__(self, *, repository: CommandRepository, clock: Clock) -> None:
        self._repository = repository
        self._clock = clock

    async def receive(
        self,
        command: Command,
        *,
        event_type: str,
        correlation_id: str | None,
        record: UpstreamRecord | None = None,
    ) -> ReceiveResult:
        """Apply ``command``; returns what happened (new, updated, duplicate, stale, failed, canceled).

        ``record``, the upstream event that carried the command, is stored (once) by the first read.
        """
        result, reason = await self._apply(command, event_type=event_type, correlation_id=correlation_id, record=record)
        for _ in range(_LOCKED_ATTEMPTS):
            if not isinstance(result, StoreResult):
                break
            # Another version of this command landed between the read and the write (rare). Decide again
            # holding the command's lock: no other version can overtake this decision, only a timer pass
            # that ends the command in between.
            async with self._repository.command_locked(command.id) as connection:
                result, reason = await self._apply(
                    command, event_type=event_type, correlation_id=correlation_id, connection=connection
                )
        if isinstance(result, StoreResult):
            raise RetryableError(
                f"command {command.id} kept changing while its version {command.updated_at} was decided"
            )
        COMMANDS_RECEIVED.labels(result).inc()
        context = {"command_id": str(command.id), "device_id": command.device_id, "result": str(result)}
        if result is ReceiveResult.STALE:
            STALE_VERSIONS.inc()
            logger.info("stale command version ignored", extra=context)
        elif result is ReceiveResult.FAILED:
            logger.warning("command refused", extra={**context, "reason": reason})
        elif result is ReceiveResult.CANCELED:
            logger.info("command canceled", extra={**context, "status": str(command.status)})
        elif result in (ReceiveResult.NEW, ReceiveResult.UPDATED):
            logger.info("command scheduled", extra=context)
        return result

    async def _apply(
        self,
        command: Command,
        *,
        event_type: str,
        correlation_id: str | None,
        connection: asyncpg.Connection | None = None,
        record: UpstreamRecord | None = None,
    ) -> tuple[ReceiveResult | StoreResult, str | None]:
        """Look, decide, store; returns the result (``StoreResult.CHANGED`` when overtaken) and a refusal's reason."""
        seen = await self._repository.look(command, connection=connection, record=record)
        if seen.version_known:
            return ReceiveResult.DUPLICATE, None
        if seen.device is not None and seen.device.metadata_problem is not None:
            problem = seen.device.metadata_problem
            INVALID_DEVICE_METADATA.labels(problem.field).inc()
            logger.warning(
                "device registry metadata refused",
                extra={"device_id": command.device_id, "field": problem.field, "reason": problem.message},
            )
        result, plan, reason = lifecycle.plan_version(
            command, seen, event_type=event_type, correlation_id=correlation_id, now=self._clock.now()
        )
        stored = await self._repository.store(plan, connection=connection)
        if stored is StoreResult.DUPLICATE:
            return ReceiveResult.DUPLICATE, None
        if stored is StoreResult.CHANGED:
            return StoreResult.CHANGED, None
        return result, reason
