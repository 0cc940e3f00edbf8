"""Modbus TCP protocol layer of the device agent: knows pymodbus, nothing of the broker or database."""

from __future__ import annotations

from device_agent.modbus.bus import (
    MAX_READ_REGISTERS,
    MAX_WRITE_REGISTERS,
    DeviceAddress,
    ModbusBus,
    Priority,
    PriorityLock,
)
from device_agent.modbus.errors import (
    DeviceError,
    DeviceUnavailable,
    DiscoveryError,
    InvalidResponse,
    ReadbackMismatch,
    RequestRejected,
    ResponseTimeout,
)
from device_agent.modbus.registers import PointType

__all__ = [
    "MAX_READ_REGISTERS",
    "MAX_WRITE_REGISTERS",
    "DeviceAddress",
    "DeviceError",
    "DeviceUnavailable",
    "DiscoveryError",
    "InvalidResponse",
    "ModbusBus",
    "PointType",
    "Priority",
    "PriorityLock",
    "ReadbackMismatch",
    "RequestRejected",
    "ResponseTimeout",
]
