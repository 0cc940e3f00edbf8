"""SunSpec point types: pure encode/decode between Python values and 16-bit holding registers."""

from __future__ import annotations

import enum
from collections.abc import Sequence

__all__ = [
    "PointType",
    "apply_scale_factor",
    "decode",
    "encode",
    "is_implemented",
    "not_implemented",
    "register_count",
    "to_raw",
]


class PointType(enum.StrEnum):
    """The SunSpec point types gridloop reads and writes (names as in the SunSpec model JSON)."""

    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    UINT64 = "uint64"
    ACC32 = "acc32"
    ACC64 = "acc64"
    SUNSSF = "sunssf"
    ENUM16 = "enum16"
    BITFIELD16 = "bitfield16"
    BITFIELD32 = "bitfield32"
    PAD = "pad"
    STRING = "string"


# Registers per value; STRING has no fixed size (the model says how many registers it spans).
_FIXED_SIZES: dict[PointType, int] = {
    PointType.UINT16: 1,
    PointType.INT16: 1,
    PointType.SUNSSF: 1,
    PointType.ENUM16: 1,
    PointType.BITFIELD16: 1,
    PointType.PAD: 1,
    PointType.UINT32: 2,
    PointType.INT32: 2,
    PointType.ACC32: 2,
    PointType.BITFIELD32: 2,
    PointType.UINT64: 4,
    PointType.ACC64: 4,
}
_SIGNED = frozenset({PointType.INT16, PointType.INT32, PointType.SUNSSF, PointType.PAD})

# SunSpec marks an unimplemented point with a sentinel instead of leaving it out. Accumulators use 0,
# which is also a valid reading, so they are always treated as implemented.
_NOT_IMPLEMENTED: dict[PointType, int] = {
    PointType.UINT16: 0xFFFF,
    PointType.ENUM16: 0xFFFF,
    PointType.BITFIELD16: 0xFFFF,
    PointType.INT16: -0x8000,
    PointType.SUNSSF: -0x8000,
    PointType.PAD: -0x8000,
    PointType.UINT32: 0xFFFFFFFF,
    PointType.BITFIELD32: 0xFFFFFFFF,
    PointType.INT32: -0x80000000,
    PointType.UINT64: 0xFFFFFFFFFFFFFFFF,
}


def register_count(point_type: PointType, size: int | None = None) -> int:
    """Number of registers a point of this type occupies; `size` is required for strings."""
    if point_type is PointType.STRING:
        if size is None or size < 1:
            raise ValueError("a string point needs its size in registers")
        return size
    fixed = _FIXED_SIZES[point_type]
    if size is not None and size != fixed:
        raise ValueError(f"{point_type} spans {fixed} registers, not {size}")
    return fixed


def not_implemented(point_type: PointType, size: int | None = None) -> list[int]:
    """The registers a device reports for a point it does not implement."""
    count = register_count(point_type, size)
    if point_type is PointType.STRING or point_type not in _NOT_IMPLEMENTED:
        return [0] * count
    return _int_to_registers(_NOT_IMPLEMENTED[point_type], count, signed=point_type in _SIGNED)


def is_implemented(point_type: PointType, registers: Sequence[int]) -> bool:
    """False when the registers hold the SunSpec "not implemented" sentinel of the type."""
    sentinel = _NOT_IMPLEMENTED.get(point_type)
    if sentinel is None:
        return True
    return _registers_to_int(registers, signed=point_type in _SIGNED) != sentinel


def decode(point_type: PointType, registers: Sequence[int]) -> int | str | None:
    """Decode a point's registers (big-endian words, as SunSpec requires).

    Returns an int for numeric types, a str for strings (NUL padding removed) and None when the
    device marks the point as not implemented.
    """
    _check_registers(registers)
    if point_type is PointType.STRING:
        raw = b"".join(word.to_bytes(2, "big") for word in registers)
        return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace").rstrip()
    expected = register_count(point_type)
    if len(registers) != expected:
        raise ValueError(f"{point_type} needs {expected} registers, got {len(registers)}")
    if not is_implemented(point_type, registers):
        return None
    return _registers_to_int(registers, signed=point_type in _SIGNED)


def encode(point_type: PointType, value: int | str, size: int | None = None) -> list[int]:
    """Encode a Python value into the registers of a point (strings are NUL padded to `size`)."""
    count = register_count(point_type, size)
    if point_type is PointType.STRING:
        if not isinstance(value, str):
            raise TypeError("a string point takes a str")
        raw = value.encode("utf-8")
        if len(raw) > count * 2:
            raise ValueError(f"{value!r} does not fit in {count} registers")
        raw = raw.ljust(count * 2, b"\x00")
        return [int.from_bytes(raw[index : index + 2], "big") for index in range(0, len(raw), 2)]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a {point_type} point takes an int, got {type(value).__name__}")
    signed = point_type in _SIGNED
    bits = 16 * count
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range for {point_type}")
    return _int_to_registers(value, count, signed=signed)


def apply_scale_factor(raw: int | None, scale_factor: int | None) -> float | None:
    """Engineering value of a raw reading: raw * 10**scale_factor (None stays None)."""
    if raw is None:
        return None
    if scale_factor is None:
        return float(raw)
    # round() removes binary noise such as 0.1 * 3 = 0.30000000000000004 at the reading's resolution.
    return round(raw * 10.0**scale_factor, max(0, -scale_factor))


def to_raw(value: float, scale_factor: int | None) -> int:
    """Raw integer to write for an engineering value under a scale factor (rounded to nearest)."""
    exponent = scale_factor or 0
    return round(value / 10.0**exponent)


def _check_registers(registers: Sequence[int]) -> None:
    for word in registers:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word} is not a 16-bit word")


def _registers_to_int(registers: Sequence[int], *, signed: bool) -> int:
    value = 0
    for word in registers:
        value = (value << 16) | word
    bits = 16 * len(registers)
    if signed and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def _int_to_registers(value: int, count: int, *, signed: bool) -> list[int]:
    bits = 16 * count
    if signed and value < 0:
        value += 1 << bits
    return [(value >> (16 * (count - 1 - index))) & 0xFFFF for index in range(count)]
