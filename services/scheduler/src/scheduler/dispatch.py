"""Firing due timers: resolve which command controls each device now and publish its action."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import asyncpg

from gridloop_common.clock import Clock
from gridloop_common.contracts import DeviceAction, DeviceResyncRequest, routing
from gridloop_common.messaging import Publisher, PublishError
from gridloop_common.observability import correlation_id
from scheduler import lifecycle, planning
from scheduler.lifecycle import DeviceDispatch
from scheduler.metrics import ACTIONS_DISPATCHED
from scheduler.repository import CommandRepository

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
        devices, read the commands on them, publish every device's action at once (the broker confirms them
        together), then store the pass's plan (scheduler.lifecycle.plan_dispatch) in one statement.
        """
        now = self._clock.now()
        repository = self._repository
        async with repository.pool.acquire() as connection, connection.transaction():
            timers = await repository.claim_due_timers(connection, now=now, limit=self._batch_size)
            if not timers:
                return 0
            device_ids = sorted({timer.device_id for timer in timers})
            await repository.lock_devices(connection, device_ids)
            facts = await repository.dispatch_facts(
                connection,
                device_ids=device_ids,
                command_ids=[timer.command_id for timer in timers if timer.command_id is not None],
            )
            first_timers: dict[str, int] = {}
            for timer in timers:
                first_timers.setdefault(timer.device_id, timer.id)
            dispatches, plan = lifecycle.plan_dispatch(
                timers,
                facts,
                now=now,
                action_ids={
                    device_id: uuid.uuid5(_ACTION_NAMESPACE, f"timer:{timer_id}")
                    for device_id, timer_id in first_timers.items()
                },
                release_known_by=planning.release_known_by(now, revert_timeout_s=self._revert_timeout_s),
            )
            published = await asyncio.gather(
                *(self._publish(dispatch) for dispatch in dispatches), return_exceptions=True
            )
            for error in published:
                # Nothing is stored: the timers stay due and fire again, with the same action ids.
                if isinstance(error, BaseException):
                    raise error
            await repository.store(plan, connection=connection)
        for dispatch in dispatches:
            for timer in dispatch.timers:
                ACTIONS_DISPATCHED.labels(timer.kind).inc()
            with correlation_id(dispatch.trace):
                _log_handover(dispatch)
                logger.info(
                    "device action dispatched",
                    extra={
                        "device_id": dispatch.device_id,
                        "action": dispatch.described,
                        "command_id": str(dispatch.action.command_id) if dispatch.action.command_id else None,
                        "source": str(dispatch.active.source) if dispatch.active else "default",
                        "timers": [str(timer.kind) for timer in dispatch.timers],
                    },
                )
        return len(timers)

    async def resync(self, request: DeviceResyncRequest) -> DeviceAction:
        """Publish the device's current action at once: the agent has just taken the device under control.

        The same steps as a timer pass for one device, without a timer: lock the device, resolve its commands
        at this moment, publish, store (states settled, a history line for the command in force).
        """
        now = self._clock.now()
        device_id = request.device_name
        repository = self._repository
        reason = request.reason or "agent took the device"
        async with repository.pool.acquire() as connection, connection.transaction():
            await repository.lock_devices(connection, [device_id])
            facts = await repository.dispatch_facts(connection, device_ids=[device_id], command_ids=[])
            dispatch, plan = lifecycle.plan_resync(
                device_id,
                facts,
                now=now,
                # A redelivered request is answered with the same action id.
                action_id=uuid.uuid5(_ACTION_NAMESPACE, f"resync:{request.request_id}"),
                reason=reason,
            )
            await self._publish(dispatch)
            await repository.store(plan, connection=connection)
        action = dispatch.action
        ACTIONS_DISPATCHED.labels("resync").inc()
        with correlation_id(dispatch.trace):
            _log_handover(dispatch)
            logger.info(
                "device action re-sent",
                extra={
                    "device_id": device_id,
                    "action": dispatch.described,
                    "command_id": str(action.command_id) if action.command_id else None,
                    "reason": reason,
                },
            )
        return action

    async def _publish(self, dispatch: DeviceDispatch) -> None:
        with correlation_id(dispatch.trace):
            await self._publisher.publish(
                exchange=routing.DEVICES_EXCHANGE,
                routing_key=routing.device_action_key(dispatch.device_id),
                body=dispatch.action,
                message_id=str(dispatch.action.action_id),
            )


def _log_handover(dispatch: DeviceDispatch) -> None:
    handover = dispatch.handover
    if handover is None:
        return
    logger.info(
        "control handed over",
        extra={
            "device_id": dispatch.device_id,
            "from_source": str(handover.from_source) if handover.from_source else "default",
            "from_command_id": str(handover.from_command) if handover.from_command else None,
            "to_source": str(handover.to_source) if handover.to_source else "default",
            "to_command_id": str(handover.to_command) if handover.to_command else None,
        },
    )
