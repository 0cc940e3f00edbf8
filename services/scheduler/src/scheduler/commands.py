"""Receiving a command version: dedupe, ignore stale, decide, persist, set timers, queue the ack."""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg

from gridloop_common.clock import Clock
from gridloop_common.contracts import Command, CommandStatus
from scheduler import planning
from scheduler.metrics import COMMANDS_RECEIVED, STALE_VERSIONS
from scheduler.repository import CommandRepository

__all__ = ["CommandReceiver"]

logger = logging.getLogger(__name__)


class CommandReceiver:
    """Applies one received command version in one transaction."""

    def __init__(self, *, repository: CommandRepository, clock: Clock) -> None:
        self._repository = repository
        self._clock = clock

    async def receive(self, command: Command, *, event_type: str, correlation_id: str | None) -> str:
        """Apply ``command``; returns what happened (new, updated, duplicate, stale, failed, canceled)."""
        now = self._clock.now()
        repository = self._repository
        async with repository.pool.acquire() as connection, connection.transaction():
            # Deliveries of the same command serialise here; different commands proceed in parallel.
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(command.id))
            if not await repository.add_version(
                connection, command, event_type=event_type, correlation_id=correlation_id
            ):
                COMMANDS_RECEIVED.labels("duplicate").inc()
                return "duplicate"
            stored = await repository.stored_version(connection, command.id)
            verdict = planning.judge_version(
                stored_updated_at=stored[0] if stored else None, received_updated_at=command.updated_at
            )
            if verdict == planning.VersionVerdict.STALE:
                assert stored is not None
                STALE_VERSIONS.inc()
                COMMANDS_RECEIVED.labels("stale").inc()
                await repository.count_stale(connection, command.id)
                await repository.history(
                    connection,
                    command.id,
                    "stale",
                    f"version {command.updated_at.isoformat()} ignored: {stored[0].isoformat()} is in force",
                )
                logger.info("stale command version ignored", extra={"command_id": str(command.id)})
                return "stale"
            was_running = stored is not None and stored[1] in ("scheduled", "active")
            await repository.history(
                connection,
                command.id,
                "received",
                f"{event_type} version {command.updated_at.isoformat()} status={command.status}"
                f" mode={command.battery_commands.mode}",
            )
            if command.status in (CommandStatus.CANCELED, CommandStatus.OPT_OUT):
                return await self._cancel(connection, command, now=now, correlation_id=correlation_id)
            device = await repository.device_facts(connection, command.device_id)
            decision = planning.decide(command, device, now=now)
            if not decision.accepted:
                await repository.save_command(
                    connection, command, state="failed", reason=decision.reason, correlation_id=correlation_id
                )
                # A version that fails after an earlier one was accepted must also leave the device.
                stop = [("stop", now)] if was_running else []
                await repository.replace_timers(
                    connection, device_id=command.device_id, command_id=command.id, timers=stop
                )
                await repository.history(connection, command.id, "failed", decision.reason or "refused")
                await repository.enqueue_ack(
                    connection, command_id=command.id, device_status="FAILED", reason=decision.reason
                )
                COMMANDS_RECEIVED.labels("failed").inc()
                logger.warning("command refused", extra={"command_id": str(command.id), "reason": decision.reason})
                return "failed"
            await repository.save_command(
                connection, command, state="scheduled", reason=None, correlation_id=correlation_id
            )
            await repository.replace_timers(
                connection,
                device_id=command.device_id,
                command_id=command.id,
                timers=_window_timers(command, now=now),
            )
            await repository.history(
                connection,
                command.id,
                "scheduled",
                f"start at {max(command.starts_at, now).isoformat()}"
                + (f", end at {command.ends_at.isoformat()}" if command.ends_at else ", no end (until replaced)"),
            )
            await repository.enqueue_ack(connection, command_id=command.id, device_status="OK", reason=None)
        result = "new" if verdict == planning.VersionVerdict.NEW else "updated"
        COMMANDS_RECEIVED.labels(result).inc()
        logger.info(
            "command scheduled",
            extra={"command_id": str(command.id), "device_id": command.device_id, "result": result},
        )
        return result

    async def _cancel(
        self, connection: asyncpg.Connection, command: Command, *, now: datetime, correlation_id: str | None
    ) -> str:
        repository = self._repository
        await repository.save_command(
            connection,
            command,
            state="canceled",
            reason=f"{command.status} by upstream",
            correlation_id=correlation_id,
        )
        # The stop timer returns the device to its default; its firing queues the cancellation ack.
        await repository.replace_timers(
            connection,
            device_id=command.device_id,
            command_id=command.id,
            timers=[("stop", now)],
        )
        await repository.history(connection, command.id, "canceled", f"{command.status}: stopping on the device")
        COMMANDS_RECEIVED.labels("canceled").inc()
        logger.info("command canceled", extra={"command_id": str(command.id), "status": str(command.status)})
        return "canceled"


def _window_timers(command: Command, *, now: datetime) -> list[tuple[str, datetime]]:
    # A late arrival starts at once, for what remains of its window.
    timers = [("start", max(command.starts_at, now))]
    if command.ends_at is not None:
        timers.append(("end", command.ends_at))
    return timers
