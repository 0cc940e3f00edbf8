"""The control loop of one battery: apply actions, keep the revert timer fresh, follow load, report outcomes.

It talks to the battery only through the battery's DeviceCoordinator (shared with the telemetry poller),
so discovery and availability are the device's, not the loop's. Each battery has its own task, so one dead
or slow device never stalls another. Actions arrive in a single-slot mailbox (the newest wins); writes use
the bus's control priority, so they never queue behind telemetry polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from device_agent.coordinator import BatteryDevice, MeterDevice
from device_agent.drivers.sunspec_meter import site_power_w
from device_agent.intent import IntentExpired, InvalidIntent, UnsupportedAction, WritePlan, intent_for
from device_agent.modbus.bus import Priority
from device_agent.modbus.errors import DeviceError, DeviceUnavailable
from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import (
    BatteryMode,
    DeviceAction,
    DeviceAvailability,
    DeviceOutcome,
    DeviceResyncRequest,
    PowerMode,
    routing,
)
from gridloop_common.messaging import Publisher, PublishError

__all__ = ["ControlLoop"]

logger = logging.getLogger(__name__)

FOLLOW_LOAD_PERIOD_S = 1.0
AVAILABILITY_HEARTBEAT_S = 60.0


@dataclass
class _Request:
    action: DeviceAction
    done: asyncio.Future[DeviceOutcome | None]


class ControlLoop:
    """Drives one battery through its coordinator; ``submit`` hands it an action and returns the outcome."""

    def __init__(
        self,
        *,
        battery: BatteryDevice,
        publisher: Publisher,
        revert_timeout_s: int,
        site_meter: MeterDevice | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.device = battery.device
        self._battery = battery
        self._clock: Clock = clock or SystemClock()
        self._publisher = publisher
        self._revert_timeout_s = revert_timeout_s
        self._site_meter = site_meter
        self._mailbox: _Request | None = None
        self._wake = asyncio.Event()
        self._desired: DeviceAction | None = None  # what should hold on the device now
        self._plan: WritePlan | None = None
        self._published_online: bool | None = None  # the availability last published
        self._last_availability_sent = 0.0
        self._resync_reason: str | None = None  # set while the scheduler must be asked for the current action
        self._taken_discovery = 0  # the coordinator's discovery count when this loop last took the device
        # An availability change seen by anyone (the poller too) wakes the loop to publish it and, when the
        # device is back, to take it again.
        battery.add_listener(self._wake.set)

    @property
    def online(self) -> bool | None:
        return self._battery.available

    async def submit(self, action: DeviceAction, *, timeout_s: float = 15.0) -> DeviceOutcome | None:
        """Queue ``action`` (replacing any not yet applied) and wait for its outcome (None: superseded)."""
        if self._desired is not None and action.issued_at < self._desired.issued_at:
            logger.info("older action ignored", extra={"device": self.device.name, "action_id": str(action.action_id)})
            return None
        future: asyncio.Future[DeviceOutcome | None] = asyncio.get_running_loop().create_future()
        if self._mailbox is not None and not self._mailbox.done.done():
            self._mailbox.done.set_result(None)
        self._mailbox = _Request(action, future)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return DeviceOutcome(
                action_id=action.action_id,
                command_id=action.command_id,
                device_name=self.device.name,
                applied=False,
                reason=f"device {self.device.name} did not answer within {timeout_s:g} s",
                observed_at=self._clock.now(),
            )

    async def run_forever(self) -> None:
        while True:
            await self._take()
            await self._publish_availability_change()
            if self._resync_reason is not None:
                await self._request_resync()
            request, self._mailbox = self._mailbox, None
            if request is not None and not request.done.done():
                outcome = await self._apply(request.action)
                if not request.done.done():
                    request.done.set_result(outcome)
            elif self._desired is not None:
                await self._maintain()
            if self._clock.monotonic() - self._last_availability_sent > AVAILABILITY_HEARTBEAT_S:
                await self._send_availability()
            self._wake.clear()
            if self._mailbox is not None:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sleep_s())

    def _sleep_s(self) -> float:
        if not self._battery.discovered:
            return 5.0
        if self._resync_reason is not None:
            return 1.0  # the request could not be published: try again soon
        if self._desired is not None and self._desired.power_mode == PowerMode.FOLLOW_LOAD:
            return FOLLOW_LOAD_PERIOD_S
        # Refresh the revert timer well inside it: at a third, so two misses still leave a margin.
        return max(1.0, self._revert_timeout_s / 3)

    async def _take(self) -> None:
        """Discover the battery unless that is done, and take it under control when it was (re)discovered."""
        if not self._battery.discovered:
            with contextlib.suppress(DeviceError):  # the coordinator recorded why: the device is unavailable
                await self._battery.ensure_discovered()
        if not self._battery.discovered or self._battery.discoveries == self._taken_discovery:
            return
        # Taken under control (this process starts, or the device is back): the scheduler answers with the
        # device's current action. What this agent last held is not trusted: a new process holds nothing, and
        # an action from before an outage may have been replaced, ended or failed meanwhile.
        self._resync_reason = "device reachable again" if self._taken_discovery else "agent started"
        self._taken_discovery = self._battery.discoveries
        # Nor is its revert timer refreshed meanwhile: that would keep an outdated control alive on the device.
        self._desired = None

    async def _request_resync(self) -> None:
        request = DeviceResyncRequest(
            device_name=self.device.name, reason=self._resync_reason, requested_at=self._clock.now()
        )
        try:
            await self._publisher.publish(
                exchange=routing.DEVICES_EXCHANGE,
                routing_key=routing.RoutingKeys.DEVICE_RESYNC,
                body=request,
                message_id=str(request.request_id),
            )
        except PublishError as error:
            logger.warning("resync request not published", extra={"device": self.device.name, "error": str(error)})
            return
        logger.info("current action requested", extra={"device": self.device.name, "reason": self._resync_reason})
        self._resync_reason = None

    async def _apply(self, action: DeviceAction) -> DeviceOutcome:
        now = self._clock.now()
        self._desired = action
        try:
            site_power = await self._site_power() if action.power_mode == PowerMode.FOLLOW_LOAD else None
            intent = intent_for(action, site_power_w=site_power)
            if not self._battery.discovered:
                raise DeviceUnavailable(self._battery.unavailable_reason or "not reachable")
            self._plan = await self._battery.use(lambda battery: battery.apply(intent, self.device.limits, now=now))
        except IntentExpired as error:
            self._desired = None
            return self._outcome(action, applied=False, reason=f"action expired before it could be applied: {error}")
        except (InvalidIntent, UnsupportedAction) as error:
            return self._outcome(action, applied=False, reason=f"unsupported on {self.device.name}: {error}")
        except DeviceUnavailable as error:
            self._battery.mark_unavailable(str(error))
            await self._publish_availability_change()
            return self._outcome(action, applied=False, reason=f"device {self.device.name} is offline: {error}")
        except DeviceError as error:
            return self._outcome(action, applied=False, reason=f"device {self.device.name} refused: {error}")
        await self._publish_availability_change()
        clamped = "; ".join(clamp.reason for clamp in self._plan.clamps) or None
        notes = "; ".join(self._plan.notes) or None
        caveats = "; ".join(action.caveats()) or None
        return self._outcome(
            action,
            applied=True,
            reason="; ".join(part for part in (clamped or notes, caveats) if part) or None,
            applied_setpoint_w=int(abs(self._plan.power_w)) if action.setpoint_w is not None else None,
        )

    async def _maintain(self) -> None:
        """Between actions: follow load, refresh the revert timer, release control after valid_until."""
        desired = self._desired
        assert desired is not None
        now = self._clock.now()
        try:
            if desired.valid_until is not None and now >= desired.valid_until:
                logger.info("action validity ended; releasing control", extra={"device": self.device.name})
                release = DeviceAction(device_name=self.device.name, mode=BatteryMode.SELF_CONSUMPTION, issued_at=now)
                await self._apply(release)
            elif desired.power_mode == PowerMode.FOLLOW_LOAD:
                intent = intent_for(desired, site_power_w=await self._site_power())
                self._plan = await self._battery.use(lambda battery: battery.apply(intent, self.device.limits, now=now))
            elif self._plan is not None and self._plan.revert_timeout_s > 0:
                await self._battery.use(lambda battery: battery.keep_alive(now=now))
        except DeviceUnavailable as error:
            # The battery, or the site meter it follows: either way control cannot hold, so it is not available.
            self._battery.mark_unavailable(str(error))
            await self._publish_availability_change()
        except DeviceError as error:
            logger.warning("control upkeep failed", extra={"device": self.device.name, "error": str(error)})

    async def _site_power(self) -> float:
        if self._site_meter is None:
            raise UnsupportedAction(f"no site meter configured for {self.device.name}")
        # Read at control priority: the loop's period is 1 s and must not queue behind telemetry polls.
        return site_power_w(await self._site_meter.refresh(priority=Priority.CONTROL))

    def _outcome(
        self, action: DeviceAction, *, applied: bool, reason: str | None, applied_setpoint_w: int | None = None
    ) -> DeviceOutcome:
        return DeviceOutcome(
            action_id=action.action_id,
            command_id=action.command_id,
            device_name=self.device.name,
            applied=applied,
            reason=reason,
            applied_setpoint_w=applied_setpoint_w,
            observed_at=self._clock.now(),
        )

    async def _publish_availability_change(self) -> None:
        """Publish the battery's availability when it differs from what was published last."""
        if self._battery.available is not None and self._battery.available != self._published_online:
            await self._send_availability()

    async def _send_availability(self) -> None:
        online, reason = self._battery.available, self._battery.unavailable_reason
        if online is None:
            return
        self._last_availability_sent = self._clock.monotonic()
        self._published_online = online
        report = DeviceAvailability(
            device_name=self.device.name,
            online=online,
            reason=reason,
            observed_at=self._clock.now(),
        )
        try:
            await self._publisher.publish(
                exchange=routing.DEVICES_EXCHANGE, routing_key=routing.RoutingKeys.DEVICE_AVAILABILITY, body=report
            )
        except PublishError as error:
            logger.warning("availability not published", extra={"device": self.device.name, "error": str(error)})
