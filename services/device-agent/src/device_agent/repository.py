"""Reading the device registry (flux.mg_device_registry, owned by telemetry-ingest)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from device_agent.intent import DeviceLimits
from device_agent.modbus.bus import DeviceAddress
from gridloop_common.contracts import DeviceMetadata, InvalidDeviceMetadata

__all__ = ["RegisteredDevice", "RegistryRead", "UnusableDevice", "load_devices"]


@dataclass(frozen=True)
class RegisteredDevice:
    """A device the agent drives: its registry row reduced to what control needs."""

    device_id: UUID
    name: str
    device_type: str
    address: DeviceAddress
    limits: DeviceLimits
    site_meter: str | None  # name of the site meter for FOLLOW_LOAD, if any
    ac_power_sign: int  # +1 when the AC model reports charging as positive


@dataclass(frozen=True)
class UnusableDevice:
    """An active device whose metadata the DeviceMetadata contract refuses: not driven, not polled, reported."""

    name: str
    field: str  # e.g. metadata.max_power_kw
    reason: str  # "invalid registry metadata: metadata.max_power_kw: Input should be greater than 0"


@dataclass(frozen=True)
class RegistryRead:
    """One read of the registry: the devices to drive and poll, and those refused with the field to fix."""

    devices: list[RegisteredDevice]
    unusable: list[UnusableDevice]


def _registered(row: asyncpg.Record, metadata: DeviceMetadata) -> RegisteredDevice | None:
    if metadata.modbus is None:
        return None  # not a Modbus device (e.g. a future OCPP charger): not this agent's to poll
    return RegisteredDevice(
        device_id=row["id"],
        name=row["name"],
        device_type=str(row["type"]),
        address=DeviceAddress(host=metadata.modbus.host, port=metadata.modbus.port, unit_id=metadata.modbus.unit_id),
        limits=DeviceLimits.from_metadata(metadata),
        site_meter=metadata.site_meter,
        ac_power_sign=metadata.ac_power_sign,
    )


async def load_devices(pool: asyncpg.Pool) -> RegistryRead | None:
    """Active devices with a Modbus address, and those refused; None while the registry table does not exist yet."""
    try:
        rows = await pool.fetch(
            "SELECT id, name, type, metadata FROM flux.mg_device_registry WHERE active ORDER BY name"
        )
    except asyncpg.exceptions.UndefinedTableError:
        return None
    devices: list[RegisteredDevice] = []
    unusable: list[UnusableDevice] = []
    for row in rows:
        try:
            metadata = DeviceMetadata.from_registry(row["metadata"])
        except InvalidDeviceMetadata as error:
            unusable.append(UnusableDevice(name=row["name"], field=error.field, reason=error.reason))
            continue
        device = _registered(row, metadata)
        if device is not None:
            devices.append(device)
    return RegistryRead(devices=devices, unusable=unusable)
