"""Reading the device registry (flux.mg_device_registry, owned by telemetry-ingest)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from device_agent.intent import DeviceLimits
from device_agent.modbus.bus import DeviceAddress
from gridloop_common.contracts import DeviceMetadata, DeviceType, InvalidDeviceMetadata

__all__ = [
    "EV_CHARGER_TYPES",
    "RegisteredCharger",
    "RegisteredDevice",
    "RegistryRead",
    "UnusableDevice",
    "charger_named",
    "find_charger",
    "load_devices",
]


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


# The device types that dial in over OCPP; the agent accepts a charger only when registered as one of these.
EV_CHARGER_TYPES = frozenset(
    {DeviceType.ON_OFF_EV_CHARGER, DeviceType.ELECTRIC_VEHICLE_V1G, DeviceType.ELECTRIC_VEHICLE_V2G}
)


@dataclass(frozen=True)
class RegisteredCharger:
    """An active EV charger in the registry: how it must dial in, and its limits."""

    device_id: UUID
    name: str
    device_type: DeviceType
    ocpp_id: str
    protocol: str  # the WebSocket subprotocol it must speak: ocpp1.6, ocpp2.0.1 or ocpp2.1
    password_sha256: str | None  # None: no password registered, so the charger is refused
    max_power_kw: float | None
    phases: int | None
    min_current_a: float | None
    reserve_percentage: float | None  # backup_reserve_percentage: for V2G, the car's minimum SoC


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


_CHARGER_QUERY = (
    "SELECT id, name, type, metadata FROM flux.mg_device_registry"
    " WHERE active AND type = ANY($1::text[]) AND metadata ? 'ocpp' AND {condition} ORDER BY name"
)


async def find_charger(pool: asyncpg.Pool, ocpp_id: str) -> RegisteredCharger | UnusableDevice | None:
    """The active EV charger registered with this OCPP identity (or why its metadata is refused); None if none.

    Read at each connection, so a charger registered, changed or deactivated counts from its next connection.
    """
    return await _charger(pool, "metadata -> 'ocpp' ->> 'id' = $2", ocpp_id)


async def charger_named(pool: asyncpg.Pool, name: str) -> RegisteredCharger | UnusableDevice | None:
    """The active EV charger registered under ``name`` (an action's device), or None if it is not one."""
    return await _charger(pool, "name = $2", name)


async def _charger(pool: asyncpg.Pool, condition: str, value: str) -> RegisteredCharger | UnusableDevice | None:
    try:
        rows = await pool.fetch(_CHARGER_QUERY.format(condition=condition), sorted(EV_CHARGER_TYPES), value)
    except asyncpg.exceptions.UndefinedTableError:
        return None
    if not rows:
        return None
    row = rows[0]  # one identity, one charger: a second registration of it is never the one that answers
    try:
        metadata = DeviceMetadata.from_registry(row["metadata"])
    except InvalidDeviceMetadata as error:
        return UnusableDevice(name=row["name"], field=error.field, reason=error.reason)
    if metadata.ocpp is None:
        return None  # "ocpp": null
    device_type = DeviceType(row["type"])
    default_version = "2.1" if device_type is DeviceType.ELECTRIC_VEHICLE_V2G else "1.6"
    return RegisteredCharger(
        device_id=row["id"],
        name=row["name"],
        device_type=device_type,
        ocpp_id=metadata.ocpp.id,
        protocol=f"ocpp{metadata.ocpp.version or default_version}",
        password_sha256=metadata.ocpp.password_sha256,
        max_power_kw=metadata.max_power_kw,
        phases=metadata.phases,
        min_current_a=metadata.min_current_a,
        reserve_percentage=metadata.backup_reserve_percentage,
    )
