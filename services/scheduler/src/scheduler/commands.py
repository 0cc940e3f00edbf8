"""Receiving a command version: dedupe, ignore stale, decide, then persist, set timers and queue the ack at once."""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg

from gridloop_common.clock import Clock
from gridloop_common.contracts import Command, CommandStatus
from scheduler import planning
from scheduler.metrics import COMMANDS_RECEIVED, INVALID_DEVICE_METADATA, STALE_VERSIONS
from scheduler.repository import CommandLook, CommandRepository, UpstreamRecord, VersionWrite

__all__ = ["CommandReceiver"]

logger = logging.getLogger(__name__)


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
    ) -> str:
        """Apply ``command``; returns what happened (new, updated, duplicate, stale, failed, canceled).

        ``record``, the upstream event that carried the command, is stored (once) by the first read.
        """
        result, reason = await self._apply(command, event_type=event_type, correlation_id=correlation_id, record=record)
        if result == "changed":
            # Another version of this command landed between the read and the write (rare). Decide again
            # holding the command's lock, so this second decision cannot be overtaken.
            async with self._repository.command_locked(command.id) as connection:
                result, reason = await self._apply(
                    command, event_type=event_type, correlation_id=correlation_id, connection=connection
                )
        COMMANDS_RECEIVED.labels(result).inc()
        context = {"command_id": str(command.id), "device_id": command.device_id, "result": result}
        if result == "stale":
            STALE_VERSIONS.inc()
            logger.info("stale command version ignored", extra=context)
        elif result == "failed":
            logger.warning("command refused", extra={**context, "reason": reason})
        elif result == "canceled":
            logger.info("command canceled", extra={**context, "status": str(command.status)})
        elif result in ("new", "updated"):
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
    ) -> tuple[str, str | None]:
        """Look, decide, write; returns the result (or 'changed' when overtaken) and a refusal's reason."""
        seen = await self._repository.look(command, connection=connection, record=record)
        if seen.version_known:
            return "duplicate", None
        if seen.device is not None and seen.device.metadata_problem is not None:
            problem = seen.device.metadata_problem
            INVALID_DEVICE_METADATA.labels(problem.field).inc()
            logger.warning(
                "device registry metadata refused",
                extra={"device_id": command.device_id, "field": problem.field, "reason": problem.message},
            )
        result, write = _decide(command, seen, event_type=event_type, now=self._clock.now())
        written = await self._repository.apply_version(
            command, write, seen=seen, event_type=event_type, correlation_id=correlation_id, connection=connection
        )
        if written != "applied":
            return written, None
        return result, write.state_reason


def _decide(command: Command, seen: CommandLook, *, event_type: str, now: datetime) -> tuple[str, VersionWrite]:
    """The outcome of receiving ``command`` given what was seen, and what to write for it."""
    verdict = planning.judge_version(stored_updated_at=seen.stored_updated_at, received_updated_at=command.updated_at)
    if verdict == planning.VersionVerdict.STALE:
        assert seen.stored_updated_at is not None
        detail = f"version {command.updated_at.isoformat()} ignored: {seen.stored_updated_at.isoformat()} is in force"
        return "stale", VersionWrite(state=None, count_stale=True, history=[("stale", detail)])
    received = (
        "received",
        f"{event_type} version {command.updated_at.isoformat()} status={command.status}"
        f" mode={command.battery_commands.mode}",
    )
    if command.status in (CommandStatus.CANCELED, CommandStatus.OPT_OUT):
        # The stop timer returns the device to its default; its firing queues the cancellation ack.
        return "canceled", VersionWrite(
            state="canceled",
            state_reason=f"{command.status} by upstream",
            timers=[("stop", now)],
            history=[received, ("canceled", f"{command.status}: stopping on the device")],
        )
    decision = planning.decide(command, seen.device, now=now)
    if not decision.accepted:
        return "failed", VersionWrite(
            state="failed",
            state_reason=decision.reason,
            # A version that fails after an earlier one was accepted must also leave the device.
            timers=[("stop", now)] if seen.running else [],
            history=[received, ("failed", decision.reason or "refused")],
            ack_status="FAILED",
            ack_reason=decision.reason,
        )
    scheduled = f"start at {max(command.starts_at, now).isoformat()}" + (
        f", end at {command.ends_at.isoformat()}" if command.ends_at else ", no end (until replaced)"
    )
    result = "new" if verdict == planning.VersionVerdict.NEW else "updated"
    caveats = "; ".join(command.battery_commands.caveats()) or None
    return result, VersionWrite(
        state="scheduled",
        timers=_window_timers(command, now=now),
        history=[received, ("scheduled", f"{scheduled}; {caveats}" if caveats else scheduled)],
        ack_status="OK",
        ack_reason=caveats,
    )


def _window_timers(command: Command, *, now: datetime) -> list[tuple[str, datetime]]:
    # A late arrival starts at once, for what remains of its window.
    timers = [("start", max(command.starts_at, now))]
    if command.ends_at is not None:
        timers.append(("end", command.ends_at))
    return timers
