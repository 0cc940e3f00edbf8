"""Firing due timers: resolve which command controls each device now and publish its action."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gridloop_common.clock import Clock
from gridloop_common.contracts import DeviceAction, routing
from gridloop_common.messaging import Publisher, PublishError
from gridloop_common.observability import correlation_id
from scheduler import planning
from scheduler.metrics import ACTIONS_DISPATCHED
from scheduler.repository import CommandRepository, DispatchFacts, DispatchRecord, TimerRow

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
            # Cleared before the pass, so a NOTIFY that arrives during it makes the wait below return at once.
            # Only a full batch is followed straight away by another pass: an empty one after every wake-up
            # cost three round trips per command.
            self._wake.clear()
            fired = 0
            try:
                fired = await self.fire_due()
            except (asyncpg.PostgresError, OSError, PublishError) as error:
                logger.warning("timer pass failed; will retry", extra={"error": repr(error)})
            if fired >= self._batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    async def fire_due(self) -> int:
        """Fire every timer due now; returns how many fired.

        One pass costs a fixed number of round trips whatever the batch holds: claim the timers, lock their
        devices, read the commands in force, publish every device's action at once (the broker confirms them
        together), then record it all in one statement.
        """
        now = self._clock.now()
        repository = self._repository
        async with repository.pool.acquire() as connection, connection.transaction():
            timers = await repository.claim_due_timers(connection, now=now, limit=self._batch_size)
            if not timers:
                return 0
            by_device: dict[str, list[TimerRow]] = defaultdict(list)
            for timer in timers:
                by_device[timer.device_id].append(timer)
            device_ids = sorted(by_device)
            await repository.lock_devices(connection, device_ids)
            facts = await repository.dispatch_facts(
                connection,
                device_ids=device_ids,
                command_ids=[timer.command_id for timer in timers if timer.command_id is not None],
            )
            plans = [self._plan(device_id, by_device[device_id], facts, now=now) for device_id in device_ids]
            published = await asyncio.gather(*(self._publish(plan) for plan in plans), return_exceptions=True)
            for error in published:
                # Nothing is recorded: the timers stay due and fire again, with the same action ids.
                if isinstance(error, BaseException):
                    raise error
            await repository.record_dispatch(
                connection,
                DispatchRecord(
                    fired=[(timer.id, plan.action.action_id) for plan in plans for timer in plan.timers],
                    winners=[(plan.device_id, plan.action.command_id) for plan in plans],
                    history=[
                        (timer.command_id, "dispatched", f"{timer.kind}: {plan.device_id} -> {plan.described}")
                        for plan in plans
                        for timer in plan.timers
                        if timer.command_id is not None
                    ],
                    # The device has been sent back to its default: acknowledge the cancellation.
                    stopped_command_ids=[
                        timer.command_id
                        for plan in plans
                        for timer in plan.timers
                        if timer.kind == "stop" and timer.command_id is not None
                    ],
                ),
                now=now,
            )
        for plan in plans:
            for timer in plan.timers:
                ACTIONS_DISPATCHED.labels(timer.kind).inc()
            with correlation_id(plan.trace):
                logger.info(
                    "device action dispatched",
                    extra={
                        "device_id": plan.device_id,
                        "action": plan.described,
                        "command_id": str(plan.action.command_id) if plan.action.command_id else None,
                        "timers": [timer.kind for timer in plan.timers],
                    },
                )
        return len(timers)

    @staticmethod
    def _plan(device_id: str, timers: list[TimerRow], facts: DispatchFacts, *, now: datetime) -> _DevicePlan:
        active = planning.winner(facts.in_force[device_id], now=now)
        action_id = uuid.uuid5(_ACTION_NAMESPACE, f"timer:{timers[0].id}")
        action = planning.action_for(device_id, active, now=now, action_id=action_id)
        trace_command = active.command_id if active else timers[0].command_id
        return _DevicePlan(
            device_id=device_id,
            timers=timers,
            action=action,
            trace=facts.correlation_ids.get(trace_command) if trace_command else None,
        )

    async def _publish(self, plan: _DevicePlan) -> None:
        with correlation_id(plan.trace):
            await self._publisher.publish(
                exchange=routing.DEVICES_EXCHANGE,
                routing_key=routing.device_action_key(plan.device_id),
                body=plan.action,
                message_id=str(plan.action.action_id),
            )


@dataclass(frozen=True)
class _DevicePlan:
    device_id: str
    timers: list[TimerRow]
    action: DeviceAction
    trace: str | None

    @property
    def described(self) -> str:
        return f"{self.action.mode}" + (f" {self.action.setpoint_w} W" if self.action.setpoint_w else "")
