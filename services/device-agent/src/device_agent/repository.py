"""Reading the device registry (flux.mg_device_registry, owned by telemetry-ingest)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from device_agent.control import DeviceLimits
from device_agent.modbus.bus import DeviceAddress

__all__ = ["RegisteredDevice", "load_devices"]

logger = logging.getLogger(__name__)


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


def _address(name: str, metadata: dict[str, Any]) -> DeviceAddress | None:
    modbus = metadata.get("modbus")
    if not isinstance(modbus, dict) or not isinstance(modbus.get("host"), str):
        return None
    try:
        return DeviceAddress(
            host=modbus["host"], port=int(modbus.get("port", 502)), unit_id=int(modbus.get("unit_id", 1))
        )
    except (TypeError, ValueError):
        logger.warning("device has an invalid modbus address; skipped", extra={"device": name})
        return None


async def load_devices(pool: asyncpg.Pool) -> list[RegisteredDevice] | None:
    """Active devices with a Modbus address; None while the registry table does not exist yet."""
    try:
        rows = await pool.fetch(
            "SELECT id, name, type, metadata FROM flux.mg_device_registry WHERE active ORDER BY name"
        )
    except asyncpg.exceptions.UndefinedTableError:
        return None
    devices = []
    for row in rows:
        metadata = row["metadata"] if isinstance(row["metadata"], dict) else {}
        address = _address(row["name"], metadata)
        if address is None:
            continue
        site_meter = metadata.get("site_meter")
        devices.append(
            RegisteredDevice(
                device_id=row["id"],
                name=row["name"],
                device_type=str(row["type"]),
                address=address,
                limits=DeviceLimits.from_metadata(metadata),
                site_meter=site_meter if isinstance(site_meter, str) else None,
                ac_power_sign=-1 if metadata.get("ac_power_sign") == -1 else 1,
            )
        )
    return devices
