"""Firing due timers: resolve which command controls each device now and publish its action."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from datetime import datetime

import asyncpg

from gridloop_common.clock import Clock
from gridloop_common.contracts import routing
from gridloop_common.messaging import Publisher, PublishError
from gridloop_common.observability import correlation_id
from scheduler import planning
from scheduler.metrics import ACTIONS_DISPATCHED
from scheduler.repository import CommandRepository, TimerRow

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)

# Timers fire in batches; the action id derives from the batch's first timer so a re-fire after a
# crash between publish and commit carries the same id and the agent can tell.
_ACTION_NAMESPACE = uuid.UUID("6f1f6a52-53c5-4c1e-9d61-0b4f2f0c9a11")


class Dispatcher:
    """Claims due timers (FOR UPDATE SKIP LOCKED) and publishes one device action per device."""

    def __init__(
        self,
        *,
        repository: CommandRepository,
        publisher: Publisher,
        clock: Clock,
        poll_interval_s: float = 0.5,
        batch_size: int = 100,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._wake = asyncio.Event()

    def wake(self, *_: object) -> None:
        """Run the next pass now (called on NOTIFY scheduler_timers)."""
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                while await self.fire_due() > 0:
                    pass
            except (asyncpg.PostgresError, OSError, PublishError) as error:
                logger.warning("timer pass failed; will retry", extra={"error": repr(error)})
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    async def fire_due(self) -> int:
        """Fire every timer due now; returns how many fired."""
        now = self._clock.now()
        repository = self._repository
        async with repository.pool.acquire() as connection, connection.transaction():
            timers = await repository.claim_due_timers(connection, now=now, limit=self._batch_size)
            by_device: dict[str, list[TimerRow]] = defaultdict(list)
            for timer in timers:
                by_device[timer.device_id].append(timer)
            for device_id, device_timers in by_device.items():
                await self._fire_device(connection, device_id, device_timers, now=now)
        return len(timers)

    async def _fire_device(
        self, connection: asyncpg.Connection, device_id: str, timers: list[TimerRow], *, now: datetime
    ) -> None:
        repository = self._repository
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", f"device:{device_id}")
        in_force = await repository.commands_in_force(connection, device_id)
        active = planning.winner(in_force, now=now)
        action_id = uuid.uuid5(_ACTION_NAMESPACE, f"timer:{timers[0].id}")
        action = planning.action_for(device_id, active, now=now, action_id=action_id)
        trace = await connection.fetchval(
            "SELECT correlation_id FROM scheduler.commands WHERE command_id = $1",
            active.command_id if active else timers[0].command_id,
        )
        with correlation_id(trace):
            await self._publisher.publish(
                exchange=routing.DEVICES_EXCHANGE,
                routing_key=routing.device_action_key(device_id),
                body=action,
                message_id=str(action_id),
            )
            await repository.mark_fired(connection, [timer.id for timer in timers], now=now, action_id=action_id)
            changes = await repository.settle_states(
                connection,
                device_id=device_id,
                active_command_id=active.command_id if active else None,
                now=now,
            )
            for command_id, state in changes:
                await repository.history(connection, command_id, state, f"now {state} on {device_id}")
            described = f"{action.mode}" + (f" {action.setpoint_w} W" if action.setpoint_w else "")
            for timer in timers:
                ACTIONS_DISPATCHED.labels(timer.kind).inc()
                if timer.command_id is not None:
                    await repository.history(
                        connection,
                        timer.command_id,
                        "dispatched",
                        f"{timer.kind}: {device_id} -> {described}",
                    )
                if timer.kind == "stop" and timer.command_id is not None:
                    # The device has been sent back to its default: acknowledge the cancellation.
                    await repository.enqueue_ack(
                        connection, command_id=timer.command_id, device_status="OK", reason=None
                    )
            logger.info(
                "device action dispatched",
                extra={
                    "device_id": device_id,
                    "action": described,
                    "command_id": str(action.command_id) if action.command_id else None,
                    "timers": [timer.kind for timer in timers],
                },
            )
