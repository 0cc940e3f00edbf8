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
from gridloop_common.contracts import DeviceAction, DeviceResyncRequest, routing
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
    """Claims due timers (FOR UPDATE SKIP LOCKED) and publishes one device action per device.

    Also answers an agent's resync request with the device's current action. ``revert_timeout_s`` is the
    agent's revert timer (the same ``GRIDLOOP_AGENT_REVERT_TIMEOUT_S``): a cancellation's OK waits for the
    agent's confirmed release, or at most that long (``planning.release_known_by``).
    """

    def __init__(
        self,
        *,
        repository: CommandRepository,
        publisher: Publisher,
        clock: Clock,
        poll_interval_s: float = 0.5,
        batch_size: int = 100,
        revert_timeout_s: float = 60.0,
    ) -> None:
        self._revert_timeout_s = revert_timeout_s
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
            # A cancelled command's stop went out: its OK waits until the release is known (P2 of issue 14).
            held_acks = [
                (timer.command_id, plan.action.action_id)
                for plan in plans
                for timer in plan.timers
                if timer.kind == "stop"
                and timer.command_id is not None
                and facts.states.get(timer.command_id) == "canceled"
            ]
            release_by = planning.release_known_by(now, revert_timeout_s=self._revert_timeout_s)
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
                    ]
                    + [
                        (
                            command_id,
                            "awaiting release",
                            "OK once the agent confirms the releasing write, at the latest"
                            f" {release_by.isoformat()} (the device's revert timer)",
                        )
                        for command_id, _ in held_acks
                    ],
                    stopped_command_ids=[],
                    held_acks=held_acks,
                    release_known_by=release_by,
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

    async def resync(self, request: DeviceResyncRequest) -> DeviceAction:
        """Publish the device's current action at once: the agent has just taken the device under control.

        The same steps as a timer pass for one device, without a timer: lock the device, resolve its commands
        at this moment, publish, record (states settled, a history line for the command in force).
        """
        now = self._clock.now()
        device_id = request.device_name
        repository = self._repository
        async with repository.pool.acquire() as connection, connection.transaction():
            await repository.lock_devices(connection, [device_id])
            facts = await repository.dispatch_facts(connection, device_ids=[device_id], command_ids=[])
            # A redelivered request is answered with the same action id.
            action_id = uuid.uuid5(_ACTION_NAMESPACE, f"resync:{request.request_id}")
            active, action = planning.current_action(device_id, facts.in_force[device_id], now=now, action_id=action_id)
            plan = _DevicePlan(
                device_id=device_id,
                timers=[],
                action=action,
                trace=facts.correlation_ids.get(active.command_id) if active else None,
            )
            await self._publish(plan)
            # The answer carries what followed any cancellation held on this device (a stop published while the
            # agent was away may never be written): its confirmed write releases those OKs too.
            await repository.hold_for_action(connection, device_id=device_id, action_id=action.action_id)
            reason = request.reason or "agent took the device"
            await repository.record_dispatch(
                connection,
                DispatchRecord(
                    fired=[],
                    winners=[(device_id, action.command_id)],
                    history=[(active.command_id, "dispatched", f"resync ({reason}): {device_id} -> {plan.described}")]
                    if active is not None
                    else [],
                    stopped_command_ids=[],
                ),
                now=now,
            )
        ACTIONS_DISPATCHED.labels("resync").inc()
        with correlation_id(plan.trace):
            logger.info(
                "device action re-sent",
                extra={
                    "device_id": device_id,
                    "action": plan.described,
                    "command_id": str(action.command_id) if action.command_id else None,
                    "reason": reason,
                },
            )
        return action

    @staticmethod
    def _plan(device_id: str, timers: list[TimerRow], facts: DispatchFacts, *, now: datetime) -> _DevicePlan:
        action_id = uuid.uuid5(_ACTION_NAMESPACE, f"timer:{timers[0].id}")
        active, action = planning.current_action(device_id, facts.in_force[device_id], now=now, action_id=action_id)
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
