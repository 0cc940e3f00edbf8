"""Errors of the device protocol layer; callers catch DeviceError and decide retry or report.

DeviceError                 anything that went wrong talking to or controlling a device
├── DeviceUnavailable       no answer: refused, unreachable, connection lost (retry later)
│   └── ResponseTimeout     connected, but no reply within the per-call timeout
├── InvalidResponse         it answered, but not with what was asked for
│   └── RequestRejected     a Modbus exception response (illegal address, illegal value, ...)
├── DiscoveryError          no SunSpec marker, a broken model chain or a required model missing
└── ReadbackMismatch        a written register read back with a different value
"""

from __future__ import annotations

__all__ = [
    "DeviceError",
    "DeviceUnavailable",
    "DiscoveryError",
    "InvalidResponse",
    "ReadbackMismatch",
    "RequestRejected",
    "ResponseTimeout",
]

# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7), for readable messages.
_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class DeviceError(Exception):
    """Base of every device protocol error."""


class DeviceUnavailable(DeviceError):
    """The device cannot be reached now; the request may be retried later."""


class ResponseTimeout(DeviceUnavailable):
    """The device accepted the connection but did not reply in time."""


class InvalidResponse(DeviceError):
    """The device replied with something other than what the request asked for."""


class RequestRejected(InvalidResponse):
    """The device answered with a Modbus exception response."""

    def __init__(self, message: str, *, exception_code: int) -> None:
        name = _EXCEPTION_NAMES.get(exception_code, "unknown exception")
        super().__init__(f"{message}: Modbus exception {exception_code} ({name})")
        self.exception_code = exception_code


class DiscoveryError(DeviceError):
    """The device does not present the SunSpec models gridloop needs."""


class ReadbackMismatch(DeviceError):
    """A register written to the device did not read back with the written value."""

    def __init__(self, point: str, *, written: int, read_back: int) -> None:
        super().__init__(f"{point}: wrote {written} but read back {read_back}")
        self.point = point
        self.written = written
        self.read_back = read_back
