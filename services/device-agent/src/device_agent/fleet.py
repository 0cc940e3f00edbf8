"""The set of devices this agent drives, kept in step with the registry."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from device_agent.controller import BatteryController
from device_agent.meter import SiteMeter
from device_agent.modbus.bus import ModbusBus
from device_agent.repository import RegisteredDevice, load_devices
from gridloop_common.contracts import DeviceType
from gridloop_common.messaging import Publisher

__all__ = ["Fleet"]

logger = logging.getLogger(__name__)


class Fleet:
    """Starts a controller task per registered battery; picks up added devices and retires removed ones."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        bus: ModbusBus,
        publisher: Publisher,
        revert_timeout_s: int,
        refresh_interval_s: float,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._publisher = publisher
        self._revert_timeout_s = revert_timeout_s
        self._refresh_interval_s = refresh_interval_s
        self._controllers: dict[str, BatteryController] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._known: dict[str, RegisteredDevice] = {}
        self.loaded = asyncio.Event()

    def controller(self, device_name: str) -> BatteryController | None:
        return self._controllers.get(device_name)

    @property
    def devices(self) -> list[str]:
        return sorted(self._controllers)

    def registered_devices(self) -> list[RegisteredDevice]:
        """Every active device with a Modbus address (batteries and meters) as of the last registry refresh.

        The telemetry poller reads its device list from here, so it follows the same registry refresh.
        """
        return list(self._known.values())

    async def refresh(self) -> None:
        """Re-read the registry and reconcile the controllers with it."""
        devices = await load_devices(self._pool)
        if devices is None:
            logger.warning("device registry not found yet (telemetry-ingest has not migrated)")
            return
        by_name = {device.name: device for device in devices}
        for name in list(self._controllers):
            if by_name.get(name) != self._known.get(name):
                self._tasks.pop(name).cancel()
                del self._controllers[name]
                logger.info("device retired", extra={"device": name})
        for device in devices:
            if device.device_type != DeviceType.BESS or device.name in self._controllers:
                continue
            meter = by_name.get(device.site_meter) if device.site_meter else None
            controller = BatteryController(
                device=device,
                bus=self._bus,
                publisher=self._publisher,
                revert_timeout_s=self._revert_timeout_s,
                site_meter=SiteMeter(bus=self._bus, address=meter.address) if meter else None,
            )
            self._controllers[device.name] = controller
            self._tasks[device.name] = asyncio.create_task(controller.run_forever(), name=f"device:{device.name}")
            self._tasks[device.name].add_done_callback(self._report_crash)
            logger.info("device picked up", extra={"device": device.name, "address": str(device.address)})
        self._known = by_name
        self.loaded.set()

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
                await asyncio.sleep(self._refresh_interval_s)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
