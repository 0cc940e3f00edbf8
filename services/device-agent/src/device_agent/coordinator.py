"""DeviceCoordinator: the one object per registered device (Home Assistant's DataUpdateCoordinator pattern).

It wraps the device's driver and owns what both the control loop and the telemetry poller need to agree
on: discovery (done once, by whichever needs the device first, and again after it was unreachable), the
latest snapshot, and availability. Whoever talks to the device does so through it, so one outage seen by
either marks the device unavailable for both, and listeners (the control loop) hear of every change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeGuard, TypeVar

from device_agent.drivers.base import Driver, Identity
from device_agent.drivers.sunspec_battery import BatterySnapshot, SunSpecBattery
from device_agent.drivers.sunspec_meter import MeterSnapshot, SunSpecMeter
from device_agent.modbus.bus import ModbusBus, Priority
from device_agent.modbus.errors import DeviceError, DeviceUnavailable
from device_agent.repository import RegisteredDevice
from gridloop_common.clock import Clock
from gridloop_common.contracts import DeviceType

__all__ = [
    "BatteryDevice",
    "DeviceCoordinator",
    "MeterDevice",
    "battery_device",
    "device_for",
    "is_battery",
    "meter_device",
]

logger = logging.getLogger(__name__)

DriverT = TypeVar("DriverT", bound=Driver[Any])
SnapshotT = TypeVar("SnapshotT")
ResultT = TypeVar("ResultT")


class DeviceCoordinator(Generic[DriverT, SnapshotT]):
    """One registered device: its driver, discovery, latest snapshot and availability."""

    def __init__(self, *, device: RegisteredDevice, driver: DriverT) -> None:
        self.device = device
        self.driver = driver
        self.identity: Identity | None = None
        self.snapshot: SnapshotT | None = None
        self.available: bool | None = None  # None until the device was first reached or found unreachable
        self.unavailable_reason: str | None = None
        # Counts successful discoveries: a new count means the device was (re)taken after being unreachable.
        self.discoveries = 0
        self._discovery_lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def discovered(self) -> bool:
        return self.identity is not None

    def add_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` on every availability change; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def ensure_discovered(self, *, priority: Priority = Priority.POLL) -> Identity:
        """Discover the device unless that is done; raises DeviceError (and marks it unavailable) on failure."""
        if self.identity is not None:
            return self.identity
        async with self._discovery_lock:
            if self.identity is not None:  # found by the other user while this one waited for the lock
                return self.identity
            try:
                identity = await self.driver.discover(priority=priority)
            except DeviceError as error:
                self._set_available(False, f"{type(error).__name__}: {error}")
                raise
            self.identity = identity
            self.discoveries += 1
            logger.info(
                "device discovered",
                extra={"device": self.name, "model": identity.model, "serial": identity.serial_number},
            )
            self._set_available(True, None)
            return identity

    async def refresh(self, *, priority: Priority = Priority.POLL) -> SnapshotT:
        """Read a fresh snapshot (discovering first if needed) and keep it as the latest."""
        await self.ensure_discovered(priority=priority)
        snapshot: SnapshotT = await self.use(lambda driver: driver.read_snapshot(priority=priority))
        self.snapshot = snapshot
        return snapshot

    async def use(self, operation: Callable[[DriverT], Awaitable[ResultT]]) -> ResultT:
        """Run ``operation`` on the driver; DeviceUnavailable marks the device unavailable (and is re-raised)."""
        try:
            result = await operation(self.driver)
        except DeviceUnavailable as error:
            self.mark_unavailable(str(error))
            raise
        if self.discovered:
            self._set_available(True, None)
        return result

    def mark_unavailable(self, reason: str) -> None:
        """The device could not be reached: forget its discovery (found again when it answers) and tell listeners."""
        self.identity = None
        self._set_available(False, reason)

    def _set_available(self, available: bool, reason: str | None) -> None:
        if available == self.available:
            return
        self.available, self.unavailable_reason = available, reason
        if available:
            logger.info("device available", extra={"device": self.name})
        else:
            logger.warning("device unavailable", extra={"device": self.name, "reason": reason})
        for listener in list(self._listeners):
            listener()


BatteryDevice = DeviceCoordinator[SunSpecBattery, BatterySnapshot]
MeterDevice = DeviceCoordinator[SunSpecMeter, MeterSnapshot]


def is_battery(device: BatteryDevice | MeterDevice) -> TypeGuard[BatteryDevice]:
    """True for a battery's coordinator (its driver takes control intents)."""
    return isinstance(device.driver, SunSpecBattery)


def is_meter(device: BatteryDevice | MeterDevice) -> TypeGuard[MeterDevice]:
    """True for a meter's coordinator (read only)."""
    return isinstance(device.driver, SunSpecMeter)


def battery_device(
    device: RegisteredDevice, *, bus: ModbusBus, revert_timeout_s: int = 60, clock: Clock | None = None
) -> BatteryDevice:
    """The coordinator of a registered battery, driven by the SunSpec battery driver."""
    battery = SunSpecBattery(
        bus=bus,
        address=device.address,
        revert_timeout_s=revert_timeout_s,
        ac_power_sign=device.ac_power_sign,
        clock=clock,
    )
    return DeviceCoordinator(device=device, driver=battery)


def meter_device(device: RegisteredDevice, *, bus: ModbusBus) -> MeterDevice:
    """The coordinator of a meter (read-only SunSpec meter driver).

    Also used for a device registered as another type that a battery names as its site meter.
    """
    return DeviceCoordinator(device=device, driver=SunSpecMeter(bus=bus, address=device.address))


def device_for(
    device: RegisteredDevice, *, bus: ModbusBus, revert_timeout_s: int = 60, clock: Clock | None = None
) -> BatteryDevice | MeterDevice | None:
    """The coordinator of a registered device, with the driver of its type; None for a type without a driver.

    A new device type (an OCPP charger, a thermal load) adds its driver here.
    """
    if device.device_type == DeviceType.BESS:
        return battery_device(device, bus=bus, revert_timeout_s=revert_timeout_s, clock=clock)
    if device.device_type == DeviceType.METER:
        return meter_device(device, bus=bus)
    return None
