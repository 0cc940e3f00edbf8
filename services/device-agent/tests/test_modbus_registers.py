"""SunSpec point encode/decode: round trips, sentinels and scale factors."""

from __future__ import annotations

import pytest

from device_agent.modbus.registers import (
    PointType,
    apply_scale_factor,
    decode,
    encode,
    is_implemented,
    not_implemented,
    register_count,
    to_raw,
)


@pytest.mark.parametrize(
    ("point_type", "value", "registers"),
    [
        (PointType.UINT16, 0, [0]),
        (PointType.UINT16, 65534, [0xFFFE]),
        (PointType.INT16, -1, [0xFFFF]),
        (PointType.INT16, -3000, [0xF448]),
        (PointType.INT16, 32767, [0x7FFF]),
        (PointType.SUNSSF, -2, [0xFFFE]),
        (PointType.ENUM16, 4, [4]),
        (PointType.BITFIELD16, 0b11, [3]),
        (PointType.UINT32, 0x12345678, [0x1234, 0x5678]),
        (PointType.INT32, -2, [0xFFFF, 0xFFFE]),
        (PointType.ACC32, 0, [0, 0]),
        (PointType.ACC32, 0xFFFFFFFF, [0xFFFF, 0xFFFF]),
        (PointType.BITFIELD32, 1 << 20, [0x0010, 0]),
        (PointType.UINT64, 123_456_789_012, [0, 0x1C, 0xBE99, 0x1A14]),
        (PointType.ACC64, 5, [0, 0, 0, 5]),
    ],
)
def test_numeric_round_trip(point_type: PointType, value: int, registers: list[int]) -> None:
    assert encode(point_type, value) == registers
    assert decode(point_type, registers) == value


def test_string_round_trip_is_nul_padded() -> None:
    registers = encode(PointType.STRING, "SunSpec", 8)
    assert len(registers) == 8
    assert registers[0] == int.from_bytes(b"Su", "big")
    assert registers[3] == int.from_bytes(b"c\x00", "big")
    assert registers[4:] == [0, 0, 0, 0]
    assert decode(PointType.STRING, registers) == "SunSpec"


def test_string_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(PointType.STRING, "x" * 17, 8)


@pytest.mark.parametrize(
    "point_type",
    [
        PointType.UINT16,
        PointType.INT16,
        PointType.SUNSSF,
        PointType.ENUM16,
        PointType.BITFIELD16,
        PointType.UINT32,
        PointType.INT32,
        PointType.BITFIELD32,
        PointType.UINT64,
    ],
)
def test_not_implemented_sentinels_decode_to_none(point_type: PointType) -> None:
    registers = not_implemented(point_type)
    assert not is_implemented(point_type, registers)
    assert decode(point_type, registers) is None


def test_accumulators_have_no_sentinel() -> None:
    assert decode(PointType.ACC32, [0, 0]) == 0
    assert decode(PointType.ACC32, [0xFFFF, 0xFFFF]) == 0xFFFFFFFF


@pytest.mark.parametrize(
    ("point_type", "value"),
    [(PointType.UINT16, -1), (PointType.UINT16, 0x10000), (PointType.INT16, 0x8000), (PointType.INT16, -0x8001)],
)
def test_out_of_range_values_are_refused(point_type: PointType, value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode(point_type, value)


def test_wrong_register_count_is_refused() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode(PointType.UINT32, [1])
    with pytest.raises(ValueError, match="16-bit"):
        decode(PointType.UINT16, [0x10000])


def test_register_counts() -> None:
    assert register_count(PointType.INT16) == 1
    assert register_count(PointType.ACC32) == 2
    assert register_count(PointType.UINT64) == 4
    assert register_count(PointType.STRING, 16) == 16
    with pytest.raises(ValueError, match="needs its size"):
        register_count(PointType.STRING)


@pytest.mark.parametrize(
    ("raw", "scale", "value"),
    [(6000, -2, 60.0), (100, -1, 10.0), (5000, 0, 5000.0), (135, 2, 13500.0), (-3000, 0, -3000.0), (3, -1, 0.3)],
)
def test_scale_factors(raw: int, scale: int, value: float) -> None:
    assert apply_scale_factor(raw, scale) == value
    assert to_raw(value, scale) == raw


def test_scale_factor_edge_cases() -> None:
    assert apply_scale_factor(None, -2) is None
    assert apply_scale_factor(42, None) == 42.0
    assert to_raw(33.333, -2) == 3333
    assert to_raw(59.996, -2) == 6000
