"""SunSpec model definitions: standard lengths and offsets, read spans, and agreement with the simulator."""

from __future__ import annotations

import itertools

import pytest

from device_agent.modbus.registers import PointType
from device_agent.profiles.base import ModelBlock, ModelDefinition, define_model, point
from device_agent.profiles.sunspec import (
    BATTERY,
    COMMON,
    DER_AC_MEASUREMENT,
    INVERTER_THREE_PHASE,
    METER_WYE,
    MODELS,
    STORAGE,
)
from gridloop_simulators import sunspec as simulator_sunspec


@pytest.mark.parametrize(
    ("model", "length"),
    [
        (COMMON, 66),
        (INVERTER_THREE_PHASE, 50),
        (STORAGE, 24),
        (METER_WYE, 105),
        (DER_AC_MEASUREMENT, 153),
        (BATTERY, 62),
    ],
)
def test_model_lengths(model: ModelDefinition, length: int) -> None:
    assert model.length == length
    assert MODELS[model.model_id] is model


@pytest.mark.parametrize(
    ("model", "name", "offset", "point_type"),
    [
        (COMMON, "SN", 50, PointType.STRING),
        (STORAGE, "WChaMax", 2, PointType.UINT16),
        (STORAGE, "StorCtl_Mod", 5, PointType.BITFIELD16),
        (STORAGE, "MinRsvPct", 7, PointType.UINT16),
        (STORAGE, "OutWRte", 12, PointType.INT16),
        (STORAGE, "InWRte", 13, PointType.INT16),
        (STORAGE, "InOutWRte_RvrtTms", 15, PointType.UINT16),
        (STORAGE, "ChaGriSet", 17, PointType.ENUM16),
        (STORAGE, "InOutWRte_SF", 25, PointType.SUNSSF),
        (BATTERY, "SoC", 11, PointType.UINT16),
        (BATTERY, "SoH", 13, PointType.UINT16),
        (BATTERY, "Hb", 18, PointType.UINT16),
        (BATTERY, "W", 47, PointType.INT16),
        (BATTERY, "W_SF", 63, PointType.SUNSSF),
        (DER_AC_MEASUREMENT, "W", 10, PointType.INT16),
        (DER_AC_MEASUREMENT, "Hz", 17, PointType.UINT32),
        (DER_AC_MEASUREMENT, "W_SF", 116, PointType.SUNSSF),
        (INVERTER_THREE_PHASE, "W", 14, PointType.INT16),
        (INVERTER_THREE_PHASE, "WH", 24, PointType.ACC32),
        (METER_WYE, "W", 18, PointType.INT16),
        (METER_WYE, "TotWhImp", 46, PointType.ACC32),
    ],
)
def test_standard_offsets(model: ModelDefinition, name: str, offset: int, point_type: PointType) -> None:
    definition = model.point(name)
    assert (definition.offset, definition.type) == (offset, point_type)


def test_writable_points_of_model_124() -> None:
    writable = {definition.name for definition in STORAGE.points if definition.writable}
    assert writable == {
        "WChaMax",
        "WChaGra",
        "WDisChaGra",
        "StorCtl_Mod",
        "VAChaMax",
        "MinRsvPct",
        "OutWRte",
        "InWRte",
        "InOutWRte_WinTms",
        "InOutWRte_RvrtTms",
        "InOutWRte_RmpTms",
        "ChaGriSet",
    }


@pytest.mark.parametrize(
    ("agent_model", "simulator_layout"),
    [
        (COMMON, simulator_sunspec.COMMON),
        (STORAGE, simulator_sunspec.STORAGE),
        (BATTERY, simulator_sunspec.BATTERY),
        (DER_AC_MEASUREMENT, simulator_sunspec.DER_AC_MEASUREMENT),
        (METER_WYE, simulator_sunspec.METER_WYE),
    ],
)
def test_agent_and_simulator_agree_on_every_point(
    agent_model: ModelDefinition, simulator_layout: simulator_sunspec.ModelLayout
) -> None:
    agent = [(p.name, p.offset, str(p.type), p.size, p.scale_factor, p.writable) for p in agent_model.points]
    simulated = [(p.name, p.offset, str(p.type), p.size, p.scale_factor, p.writable) for p in simulator_layout.points]
    assert agent == simulated


def test_read_spans_stay_on_point_boundaries() -> None:
    spans = DER_AC_MEASUREMENT.read_spans(DER_AC_MEASUREMENT.register_count, 125)
    assert sum(count for _, count in spans) == 155
    assert all(count <= 125 for _, count in spans)
    starts = {definition.offset for definition in DER_AC_MEASUREMENT.points}
    assert all(offset in starts for offset, _ in spans)
    assert spans[0][0] == 0
    for (offset, count), (next_offset, _) in itertools.pairwise(spans):
        assert offset + count == next_offset


def test_read_spans_never_split_a_multi_register_point() -> None:
    model = define_model(
        64999, "test", 5, [point("A", PointType.UINT16), point("B", PointType.UINT32), point("C", PointType.ACC32)]
    )
    # ID, L, A fit in 3; B (2 registers) would be torn by a second 3-register read, so it goes alone.
    assert model.read_spans(7, 3) == [(0, 3), (3, 2), (5, 2)]


def test_model_definition_rejects_inconsistent_tables() -> None:
    with pytest.raises(ValueError, match="model says"):
        define_model(64998, "bad", 3, [point("A", PointType.UINT16)])
    with pytest.raises(ValueError, match="no sunssf"):
        define_model(64997, "bad", 1, [point("A", PointType.UINT16, "A_SF")])


def test_model_block_scales_and_handles_missing_points() -> None:
    registers = [0] * STORAGE.register_count
    registers[0], registers[1] = 124, 24
    registers[STORAGE.point("OutWRte").offset] = 6000
    registers[STORAGE.point("InOutWRte_SF").offset] = 0xFFFE  # -2
    registers[STORAGE.point("MinRsvPct").offset] = 0xFFFF  # not implemented
    block = ModelBlock(STORAGE, 40070, tuple(registers))
    assert block.value("OutWRte") == 60.0
    assert block.scale_factor("OutWRte") == -2
    assert block.value("MinRsvPct") is None
    assert block.address_of("InOutWRte_RvrtTms") == 40085
    shorter = ModelBlock(STORAGE, 40070, tuple(registers[:10]))
    assert shorter.value("OutWRte") is None
