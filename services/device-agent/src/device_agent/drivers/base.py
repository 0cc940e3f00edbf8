"""The interface every device driver implements, so a device type (battery, meter, charger, thermal load) is a driver.

A driver speaks one device's protocol and holds what that protocol needs (the SunSpec model map, the
revert timer in force); it keeps no idea of availability. The DeviceCoordinator wrapping it owns that, the
latest snapshot and discovery's bookkeeping, and both the control loop and the telemetry poller use the
coordinator, never a driver of their own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, TypeVar

from device_agent.modbus.bus import DeviceAddress, Priority

__all__ = ["ControllableDriver", "Driver", "Identity"]

SnapshotT_co = TypeVar("SnapshotT_co", covariant=True)
IntentT_contra = TypeVar("IntentT_contra", contravariant=True)
LimitsT_contra = TypeVar("LimitsT_contra", contravariant=True)
PlanT_co = TypeVar("PlanT_co", covariant=True)


class Identity(Protocol):
    """What discovery found out about the device, for the logs."""

    @property
    def model(self) -> str: ...

    @property
    def serial_number(self) -> str: ...


class Driver(Protocol[SnapshotT_co]):
    """A device that can be found and read: discovery, then typed snapshots of its state."""

    @property
    def address(self) -> DeviceAddress: ...

    async def discover(self, *, priority: Priority = Priority.POLL) -> Identity:
        """Find what the device speaks (raises DeviceError: DeviceUnavailable when it cannot be reached)."""
        ...

    async def read_snapshot(self, *, priority: Priority = Priority.POLL) -> SnapshotT_co:
        """One consistent read of the device's state."""
        ...


class ControllableDriver(Driver[SnapshotT_co], Protocol[SnapshotT_co, IntentT_contra, LimitsT_contra, PlanT_co]):
    """A device that also takes control intents: apply one (verified), keep it alive, let it lapse."""

    async def apply(
        self, intent: IntentT_contra, limits: LimitsT_contra | None = None, *, now: datetime | None = None
    ) -> PlanT_co:
        """Write what ``intent`` needs, read it back, and return what was written."""
        ...

    async def keep_alive(self, *, now: datetime | None = None) -> bool:
        """Renew the device's fail-safe for the control in force (False: nothing to renew, it may lapse)."""
        ...
