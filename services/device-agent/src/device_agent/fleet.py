"""The set of devices this agent drives and polls, kept in step with the registry.

One DeviceCoordinator per registered device (batteries and meters), shared by the control loops and the
telemetry poller; one ControlLoop task per battery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from prometheus_client import Gauge

from device_agent.control_loop import ControlLoop
from device_agent.coordinator import BatteryDevice, MeterDevice, battery_device, meter_device
from device_agent.modbus.bus import ModbusBus
from device_agent.repository import RegisteredDevice, UnusableDevice, load_devices
from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import DeviceAvailability, DeviceType, routing
from gridloop_common.messaging import Publisher, PublishError

__all__ = ["Fleet"]

logger = logging.getLogger(__name__)

# While the registry table does not exist yet (telemetry-ingest has not migrated), look again soon: 0.5 s,
# doubling up to the normal period, so an agent started first drives devices moments after the migration.
REGISTRY_MISSING_FIRST_RETRY_S = 0.5
DEVICES_INVALID_METADATA = Gauge(
    "gridloop_agent_devices_invalid_metadata",
    "Active registry devices not driven or polled because their metadata breaks the DeviceMetadata contract.",
)

# How often a wait for an unknown device re-reads the registry itself when no change notice wakes it.
DEVICE_WAIT_RECHECK_S = 1.0


class Fleet:
    """A coordinator per registered device and a control loop task per battery; follows the registry's changes."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        bus: ModbusBus,
        publisher: Publisher,
        revert_timeout_s: int,
        refresh_interval_s: float,
        clock: Clock | None = None,
    ) -> None:
        self._pool = pool
        self._clock: Clock = clock or SystemClock()
        self._bus = bus
        self._publisher = publisher
        self._revert_timeout_s = revert_timeout_s
        self._refresh_interval_s = refresh_interval_s
        self._batteries: dict[str, BatteryDevice] = {}
        self._meters: dict[str, MeterDevice] = {}
        self._controllers: dict[str, ControlLoop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._known: dict[str, RegisteredDevice] = {}
        self._unusable: dict[str, UnusableDevice] = {}
        self.loaded = asyncio.Event()
        self._registry_changed = asyncio.Event()
        # One reconciliation at a time: an older read applied after a newer one would retire new devices.
        self._refresh_lock = asyncio.Lock()
        self._missing_retry_s = REGISTRY_MISSING_FIRST_RETRY_S

    def control_loop(self, device_name: str) -> ControlLoop | None:
        return self._controllers.get(device_name)

    @property
    def devices(self) -> list[str]:
        return sorted(self._controllers)

    def coordinators(self) -> list[BatteryDevice | MeterDevice]:
        """The coordinator of every active battery and meter as of the last registry refresh.

        The telemetry poller reads its devices from here: the same objects the control loops use.
        """
        devices: list[BatteryDevice | MeterDevice] = [*self._batteries.values(), *self._meters.values()]
        return sorted(devices, key=lambda device: device.name)

    def unusable_reason(self, device_name: str) -> str | None:
        """Why an active device is not driven (its metadata breaks the contract), or None."""
        unusable = self._unusable.get(device_name)
        return None if unusable is None else f"device {device_name!r} is not driven: {unusable.reason}"

    def registry_changed(self) -> None:
        """A change notice (LISTEN on the registry's channel): re-read the registry now, not at the period's end."""
        self._registry_changed.set()

    async def wait_for_control_loop(self, device_name: str, *, timeout_s: float) -> ControlLoop | None:
        """The device's controller, re-reading the registry until it names the device or ``timeout_s`` is up.

        For an action that overtook its device's registration: it waits for the registry instead of being
        refused. Each announced change wakes it, and it re-reads at least every DEVICE_WAIT_RECHECK_S in
        case the change notice is lost (LISTEN connection down).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            await self.refresh()
            controller = self.control_loop(device_name)
            remaining = deadline - loop.time()
            if controller is not None or remaining <= 0:
                return controller
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._registry_changed.wait(), min(remaining, DEVICE_WAIT_RECHECK_S))

    async def refresh(self) -> None:
        """Re-read the registry and reconcile the coordinators and control loops with it."""
        async with self._refresh_lock:
            await self._refresh_unlocked()

    async def _refresh_unlocked(self) -> None:
        read = await load_devices(self._pool)
        if read is None:
            logger.warning("device registry not found yet (telemetry-ingest has not migrated)")
            return
        devices = read.devices
        by_name = {device.name: device for device in devices}
        for name in list(self._known):
            if by_name.get(name) != self._known.get(name):
                self._batteries.pop(name, None)
                self._meters.pop(name, None)
                if name in self._controllers:
                    self._tasks.pop(name).cancel()
                    del self._controllers[name]
                    logger.info("device retired", extra={"device": name})
        for device in devices:
            if device.device_type == DeviceType.METER and device.name not in self._meters:
                self._meters[device.name] = meter_device(device, bus=self._bus)
        for device in devices:
            if device.device_type != DeviceType.BESS or device.name in self._controllers:
                continue
            battery = battery_device(device, bus=self._bus, revert_timeout_s=self._revert_timeout_s, clock=self._clock)
            self._batteries[device.name] = battery
            controller = ControlLoop(
                battery=battery,
                publisher=self._publisher,
                revert_timeout_s=self._revert_timeout_s,
                site_meter=self._site_meter(device, by_name),
                clock=self._clock,
            )
            self._controllers[device.name] = controller
            self._tasks[device.name] = asyncio.create_task(controller.run_forever(), name=f"device:{device.name}")
            self._tasks[device.name].add_done_callback(self._report_crash)
            logger.info("device picked up", extra={"device": device.name, "address": str(device.address)})
        self._known = by_name
        await self._report_unusable(read.unusable)
        self.loaded.set()

    def _site_meter(self, device: RegisteredDevice, by_name: dict[str, RegisteredDevice]) -> MeterDevice | None:
        """The coordinator of the meter ``device`` follows for FOLLOW_LOAD (``metadata.site_meter``), if any."""
        named = by_name.get(device.site_meter) if device.site_meter else None
        if named is None:
            return None
        # A site meter registered as another type (a battery's own AC model) is read through a meter driver of its own.
        return self._meters.get(named.name) or meter_device(named, bus=self._bus)

    async def _report_unusable(self, unusable: list[UnusableDevice]) -> None:
        """Log and publish (as unavailable, with the reason) each device newly refused for its metadata."""
        previous, self._unusable = self._unusable, {device.name: device for device in unusable}
        DEVICES_INVALID_METADATA.set(len(unusable))
        for device in unusable:
            if previous.get(device.name) == device:
                continue
            logger.warning(
                "device registry metadata refused; device not driven",
                extra={"device": device.name, "field": device.field, "reason": device.reason},
            )
            report = DeviceAvailability(
                device_name=device.name, online=False, reason=device.reason, observed_at=self._clock.now()
            )
            try:
                await self._publisher.publish(
                    exchange=routing.DEVICES_EXCHANGE, routing_key=routing.RoutingKeys.DEVICE_AVAILABILITY, body=report
                )
            except PublishError as error:
                logger.warning("availability not published", extra={"device": device.name, "error": str(error)})

    async def _until_next_refresh(self) -> None:
        """Until a registry change is announced or the period is up (sooner while no registry was ever read)."""
        if self.loaded.is_set():
            timeout_s = self._refresh_interval_s
        else:
            timeout_s = min(self._missing_retry_s, self._refresh_interval_s)
            self._missing_retry_s = min(self._missing_retry_s * 2, self._refresh_interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._registry_changed.wait(), timeout_s)
        # Cleared before the re-read: a notice arriving during it sets the event again for one more.
        self._registry_changed.clear()

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("device task crashed", extra={"task": task.get_name()}, exc_info=task.exception())

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self.refresh()
                except (asyncpg.PostgresError, OSError) as error:
                    logger.warning("registry refresh failed", extra={"error": repr(error)})
                await self._until_next_refresh()
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
